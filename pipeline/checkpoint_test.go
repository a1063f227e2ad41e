package pipeline

import (
	"math"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// buildTinyCheckpoint builds ../shared/reference/tiny-ckpt/<name> (the
// tiny-onnx-sd weights in the original single-file layout) into a folder.
func buildTinyCheckpoint(t *testing.T, name string, loras ...ckpt.LoRASpec) string {
	t.Helper()
	b, err := ckpt.Build(t.Context(), shareddir.File(t, "reference/tiny-ckpt/"+name), ckpt.BuildOptions{
		CacheDir:     t.TempDir(),
		Config:       &ckpt.Config{TextHeads: map[ckpt.Component]int{ckpt.TextEncoder: 4}},
		TokenizerDir: shareddir.File(t, "clip-tokenizer"),
		LoRAs:        loras,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.Dir
}

// referenceDiffs runs reference.json's request on comps and returns the
// largest differences from diffusers' run: text embeddings, each step's
// latents, the image.
func referenceDiffs(t *testing.T, comps Components, ref *testenv.TinyReference) (text float64, steps []float64, image float64) {
	t.Helper()
	p, err := New(comps, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	steps = make([]float64, len(ref.ORT.Steps))
	onStep := func(s Step) { // through the public hook, as a program outside the module would
		mu.Lock()
		defer mu.Unlock()
		i := s.Step - 1
		if s.Step == 1 { // [uncond, cond]
			emb := s.TextEmbeddings.Data().([]float32)
			n := len(emb) / 2
			text = max(testenv.MaxAbsDiff(emb[n:], ref.ORT.TextEncoderCalls[0].LastHiddenState),
				testenv.MaxAbsDiff(emb[:n], ref.ORT.TextEncoderCalls[1].LastHiddenState))
		}
		if s.Timestep != ref.ORT.Steps[i].T {
			steps[i] = math.Inf(1)
			return
		}
		steps[i] = testenv.MaxAbsDiff(s.Latents.Data().([]float32), ref.ORT.Steps[i].LatentsAfter)
	}
	res, err := p.Generate(t.Context(), Request{
		OnStep: onStep,
		Prompt: ref.Call.Prompt, Width: ref.Call.Width, Height: ref.Call.Height, Steps: ref.Call.Steps,
		GuidanceScale: new(ref.Call.GuidanceScale), Latents: ref.InitialLatents,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Metrics.Steps != len(ref.ORT.Steps) {
		t.Errorf("%d UNet calls, diffusers made %d", res.Metrics.Steps, len(ref.ORT.Steps))
	}
	mu.Lock()
	defer mu.Unlock()
	return text, steps, testenv.MaxAbsDiff(res.Pixels.Data().([]float32), ref.ORT.Image)
}

// TestParityCheckpoint builds the graphs from the single-file checkpoint
// tiny-sd.safetensors (internal/ckpt) and reproduces diffusers' run on the
// exported model: text embeddings, every step's latents and the image
// within 1e-4. The fp16 copy must stay within what widening its fp16
// weights to fp32 gives (tiny-ckpt/README.md: latents up to 8e-3, image
// 5.6e-4; 1e-4 of margin is allowed).
func TestParityCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		file               string
		text, latents, img float64
	}{
		{"tiny-sd.safetensors", 1e-4, 1e-4, 1e-4},
		{"tiny-sd-fp16.safetensors", 5e-2, 8e-3 + 1e-4, 5.6e-4 + 1e-4},
	} {
		t.Run(tc.file, func(t *testing.T) {
			text, steps, img := referenceDiffs(t, componentsFrom(t, buildTinyCheckpoint(t, tc.file)), testenv.LoadTinyReference(t))
			if text > tc.text {
				t.Errorf("text embeddings differ from diffusers by %g", text)
			}
			var worst float64
			for i, d := range steps {
				worst = max(worst, d)
				if d > tc.latents {
					t.Errorf("step %d: latents differ from diffusers by %g", i, d)
				}
			}
			if img > tc.img {
				t.Errorf("image differs from diffusers by %g", img)
			}
			t.Logf("max |Δ|: text %.2g, latents %.2g, image %.2g", text, worst, img)
		})
	}
}

// TestParityLoRAAtOpen merges tiny-lora into the graphs' weights when the
// checkpoint is built and reproduces diffusers' runs on the merged model at
// multipliers 1.0 and 0.5 within 1e-4.
func TestParityLoRAAtOpen(t *testing.T) {
	lora := shareddir.File(t, "reference/tiny-lora/tiny-lora.safetensors")
	for _, tc := range []struct {
		mult string
		m    float32
	}{{"1.0", 1}, {"0.5", 0.5}} {
		t.Run("m"+tc.mult, func(t *testing.T) {
			ref := testenv.TinyLoRAReference(t, tc.mult)
			dir := buildTinyCheckpoint(t, "tiny-sd.safetensors", ckpt.LoRASpec{Path: lora, Multiplier: tc.m})
			text, steps, img := referenceDiffs(t, componentsFrom(t, dir), ref)
			var worst float64
			for _, d := range steps {
				worst = max(worst, d)
			}
			if text > 1e-4 || worst > 1e-4 || img > 1e-4 {
				t.Errorf("differs from diffusers on the merged model: text %g, latents %g, image %g", text, worst, img)
			}
			t.Logf("max |Δ|: text %.2g, latents %.2g, image %.2g", text, worst, img)
		})
	}
}
