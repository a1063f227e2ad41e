package models

import (
	"flag"
	"fmt"
	"image"
	"image/draw"
	"image/png"
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
// 20 steps, its guidance scale (DefaultGuidance), seed 1, each image shown
// at twice its size.
func TestGrid(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate docs/default-model-grid.png")
	}
	p := openDefault(t)
	const cell, gap, scale = 64, 4, 2
	rows, cols := len(shapeNames), len(palette)
	out := image.NewNRGBA(image.Rect(0, 0, cols*(scale*cell+gap)+gap, rows*(scale*cell+gap)+gap))
	draw.Draw(out, out.Bounds(), image.White, image.Point{}, draw.Src)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for r := range rows {
		for c := range cols {
			wg.Go(func() {
				res, err := p.Generate(t.Context(), pipeline.Request{
					Prompt: gridPrompt(r, c), Width: cell, Height: cell, Steps: 20,
					GuidanceScale: DefaultGuidance, Seed: 1,
				})
				if err != nil {
					t.Error(err)
					return
				}
				img := res.Images[0].(*image.NRGBA)
				x0, y0 := gap+c*(scale*cell+gap), gap+r*(scale*cell+gap)
				mu.Lock()
				defer mu.Unlock()
				for y := range scale * cell {
					for x := range scale * cell {
						out.SetNRGBA(x0+x, y0+y, img.NRGBAAt(x/scale, y/scale))
					}
				}
			})
		}
	}
	wg.Wait()
	path := filepath.Join(testenv.ModuleRoot(), "docs", "default-model-grid.png")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, out); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s", path)
}
