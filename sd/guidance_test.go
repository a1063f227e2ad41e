package sd_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestGuidanceSpellings checks the two spellings of a request's guidance:
// nil is the model's default, and a scale of 1 or less (0 included) turns
// guidance off, as diffusers does: no unconditional text embeddings at
// any step (pipeline's TestNoGuidance counts the UNet rows) and the same
// pixels for every such scale; a guided request differs.
func TestGuidanceSpellings(t *testing.T) {
	testenv.RequireORT(t)
	dir := copyDir(t, legacyModel(t))
	writeFile(t, dir, "sdpipe.json", `{"defaults": {"guidance_scale": 4}}`)
	m, err := sd.Open(t.Context(), dir, sd.WithoutVAEEncoder(), sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	run := func(g *float64) ([]float32, sd.Request, []int) {
		var rows []int
		res, err := m.Generate(t.Context(), sd.Request{Prompt: "a red circle", NegativePrompt: "blue", Steps: 3, Seed: 5, ImagesPerPrompt: 2,
			GuidanceScale: g, OnStep: func(s sd.Step) { rows = append(rows, s.TextEmbeddings.Shape()[0]) }})
		if err != nil {
			t.Fatal(err)
		}
		return slices.Clone(res.Pixels.Data().([]float32)), res.Request, rows
	}
	all := func(rows []int, n int) bool {
		return len(rows) > 0 && !slices.ContainsFunc(rows, func(r int) bool { return r != n })
	}
	def, r, rows := run(nil)
	if *r.GuidanceScale != 4 || !all(rows, 2) || !strings.Contains(sd.Infotext(r, 5, ""), "CFG scale: 4") {
		t.Errorf("nil guidance: resolved to %v with UNet rows %v, want the model's default 4, guided (negative and prompt rows)", *r.GuidanceScale, rows)
	}
	off, r, rows := run(new(0.0))
	if *r.GuidanceScale != 0 || !all(rows, 1) {
		t.Errorf("guidance 0: resolved to %v with UNet rows %v, want 0 and the prompt's row alone", *r.GuidanceScale, rows)
	}
	if one, _, rows := run(new(1.0)); !slices.Equal(one, off) || !all(rows, 1) {
		t.Errorf("guidance 1 (rows %v) differs from guidance 0: both are the prompt's prediction alone", rows)
	}
	if slices.Equal(def, off) {
		t.Error("the guided default and guidance 0 gave the same pixels")
	}

	// in sdpipe.json an explicit 0 is no guidance (it reads as 1, which
	// behaves the same), and a missing key diffusers' 7.5
	writeFile(t, dir, "sdpipe.json", `{"defaults": {"guidance_scale": 0, "width": 32}}`)
	turbo, err := sd.Open(t.Context(), dir, sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	defer turbo.Close()
	if d := turbo.Defaults(); d.GuidanceScale != 1 || d.Width != 32 {
		t.Errorf(`sdpipe.json "guidance_scale": 0: defaults %+v, want guidance 1 (off) and width 32`, d)
	}
}
