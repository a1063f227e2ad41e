package sd_test

import (
	"image"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestTAESD opens a generated tiny model with a generated random-weight
// TAESD, once as madebyollin's safetensors files and once as the ONNX
// folder cmd/sdgen writes, and checks that previews decoded by it arrive
// during a run and that FastDecode gives an image of the request's size,
// the same from both forms of the same weights.
func TestTAESD(t *testing.T) {
	testenv.RequireORT(t)
	model := legacyModel(t)
	tc := modelgen.TinyTAESD()
	dir := t.TempDir()
	if err := modelgen.WriteTAESD(dir, tc, modelgen.Options{Seed: 9}); err != nil {
		t.Fatal(err)
	}
	_, decFile, err := ckpt.WriteTAESDFiles(t.TempDir(), tc, 9, safetensors.F32)
	if err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	var fast []*image.NRGBA
	for _, path := range []string{decFile, dir} {
		m, err := sd.Open(t.Context(), model, sd.WithTAESD(path), sd.WithPreviewEvery(1), sd.WithCheckpointCache(cache), sd.WithThreads(sd.UNet, 1), sd.WithThreads(sd.TextEncoder, 1), sd.WithThreads(sd.VAEDecoder, 1))
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		// each step waits a little, so that the preview worker's renders
		// (of a few ms) land between steps even on a loaded machine
		slowSteps := func(sd.Step) { time.Sleep(20 * time.Millisecond) }
		req := sd.Request{Prompt: "a red circle", Steps: 12, Seed: 4, Width: 64, Height: 48, Preview: true, OnStep: slowSteps}
		h, err := m.Submit(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		decoded := 0
		for ev := range h.Progress() {
			if ev.Preview != nil && ev.Preview.Bounds() == image.Rect(0, 0, 64, 48) {
				decoded++ // the cheap map is 8×6
			}
		}
		if _, err := h.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if decoded == 0 {
			t.Errorf("%s: no TAESD preview among the progress events", path)
		}
		req.Preview, req.FastDecode, req.OnStep = false, true, nil
		res, err := m.Generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		img := res.Images[0].(*image.NRGBA)
		if img.Bounds() != image.Rect(0, 0, 64, 48) {
			t.Errorf("%s: fast-decoded image %v, want 64×48", path, img.Bounds())
		}
		req.FastDecode = false
		slow, err := m.Generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		if string(slow.Images[0].(*image.NRGBA).Pix) == string(img.Pix) {
			t.Errorf("%s: FastDecode gave the VAE's image", path)
		}
		fast = append(fast, img)
	}
	if d := maxPixDiff(fast[0].Pix, fast[1].Pix); d > 1 {
		t.Errorf("fast decodes from safetensors and from the ONNX folder differ by up to %d levels", d)
	}
}

func maxPixDiff(a, b []uint8) int {
	d := 0
	for i := range a {
		d = max(d, int(a[i])-int(b[i]), int(b[i])-int(a[i]))
	}
	return d
}
