package pipeline

import (
	"math"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// referenceComponents opens ../shared/reference/tiny-onnx-sd/model.
func referenceComponents(t *testing.T) Components {
	t.Helper()
	return componentsFrom(t, testenv.TinyReferenceModel(t))
}

// componentsFrom opens the models of a diffusers ONNX folder.
func componentsFrom(t *testing.T, dir string) Components {
	t.Helper()
	testenv.RequireORT(t)
	o := ort.Options{IntraOpThreads: 1}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	te, err := textenc.Open(t.Context(), filepath.Join(dir, "text_encoder", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { te.Close() })
	un, err := unet.Open(t.Context(), filepath.Join(dir, "unet", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { un.Close() })
	dec, err := vae.OpenDecoder(t.Context(), filepath.Join(dir, "vae_decoder", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dec.Close() })
	enc, err := vae.OpenEncoder(t.Context(), filepath.Join(dir, "vae_encoder", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enc.Close() })
	cfg, err := scheduler.LoadConfig(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	return Components{Tokenizer: tok, TextEncoder: te, UNet: un, VAEDecoder: dec, VAEEncoder: enc, Scheduler: cfg,
		UNetTimestepPerItem: un.PerItemTimesteps()}
}

// TestParityWithDiffusers runs the reference request through the pipeline
// and compares the text embeddings, every step's latents and the final
// image with diffusers' own OnnxStableDiffusionPipeline run. It sees the
// embeddings and latents through the public Request.OnStep hook.
func TestParityWithDiffusers(t *testing.T) {
	ref := testenv.LoadTinyReference(t)
	p, err := New(referenceComponents(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const tol = 1e-4
	var mu sync.Mutex
	stepDiff := make([]float64, len(ref.ORT.Steps))
	var condDiff, uncondDiff float64
	onStep := func(s Step) {
		mu.Lock()
		defer mu.Unlock()
		if s.Step == 1 { // [uncond, cond]
			emb := s.TextEmbeddings.Data().([]float32)
			n := len(emb) / 2
			uncondDiff = testenv.MaxAbsDiff(emb[:n], ref.ORT.TextEncoderCalls[1].LastHiddenState)
			condDiff = testenv.MaxAbsDiff(emb[n:], ref.ORT.TextEncoderCalls[0].LastHiddenState)
		}
		if s.Timestep != ref.ORT.Steps[s.Step-1].T {
			stepDiff[s.Step-1] = math.Inf(1)
			return
		}
		stepDiff[s.Step-1] = testenv.MaxAbsDiff(s.Latents.Data().([]float32), ref.ORT.Steps[s.Step-1].LatentsAfter)
	}
	res, err := p.Generate(t.Context(), Request{
		OnStep:        onStep,
		Prompt:        ref.Call.Prompt,
		Width:         ref.Call.Width,
		Height:        ref.Call.Height,
		Steps:         ref.Call.Steps,
		GuidanceScale: ref.Call.GuidanceScale,
		Latents:       ref.InitialLatents,
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if condDiff > tol || uncondDiff > tol {
		t.Errorf("text embeddings differ from diffusers by %g (cond) and %g (uncond)", condDiff, uncondDiff)
	}
	if len(ref.ORT.Steps) != res.Metrics.Steps {
		t.Errorf("%d UNet calls, diffusers made %d", res.Metrics.Steps, len(ref.ORT.Steps))
	}
	for i, d := range stepDiff {
		if d > tol {
			t.Errorf("step %d: latents differ from diffusers by %g", i, d)
		}
	}
	if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), ref.ORT.Image); d > tol {
		t.Errorf("image differs from diffusers by %g", d)
	} else {
		t.Logf("max |Δ| image %.2g, last step latents %.2g", d, stepDiff[len(stepDiff)-1])
	}
}
