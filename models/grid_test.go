package models

import (
	"flag"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
)

var update = flag.Bool("update", false, "regenerate docs/default-model-grid.png")

// gridPrompt is the prompt of row r (shape), column c (colour) of the
// README's picture; the background is the colour three places on.
func gridPrompt(r, c int) string {
	return fmt.Sprintf("a %s %s on a %s background", palette[c].name, shapeNames[r], palette[(c+3)%len(palette)].name)
}

// TestGrid regenerates the README's prompt-grid picture with -update: one
// row per shape, one column per colour, the model's own scheduler (PNDM),
// 20 steps, its guidance scale (sdpipe.json), seed 1, each image shown
// at twice its size.
func TestGrid(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate docs/default-model-grid.png")
	}
	p := openDefault(t)
	guidance := defaultGuidance(t)
	rows, cols := len(shapeNames), len(palette)
	cells := make([]sheetCell, rows*cols)
	var wg sync.WaitGroup
	for r := range rows {
		for c := range cols {
			wg.Go(func() {
				res, err := p.Generate(t.Context(), pipeline.Request{
					Prompt: gridPrompt(r, c), Width: 64, Height: 64, Steps: 20,
					GuidanceScale: new(guidance), Seed: 1,
				})
				if err != nil {
					t.Error(err)
					return
				}
				cells[r*cols+c] = sheetCell{img: res.Images[0].(*image.NRGBA), frame: color.NRGBA{255, 255, 255, 255}}
			})
		}
	}
	wg.Wait()
	path := filepath.Join(testenv.ModuleRoot(), "docs", "default-model-grid.png")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	writePNG(t, path, contactSheet(cells, cols, 2))
	t.Logf("wrote %s", path)
}
