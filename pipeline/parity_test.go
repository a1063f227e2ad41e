package pipeline

import (
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/session"
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
	o := session.Options{Threads: 1}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	te := testenv.OpenComponent(t, textenc.Open, dir, "text_encoder", o)
	un := testenv.OpenComponent(t, unet.Open, dir, "unet", o)
	dec := testenv.OpenComponent(t, vae.OpenDecoder, dir, "vae_decoder", o)
	enc := testenv.OpenComponent(t, vae.OpenEncoder, dir, "vae_encoder", o)
	cfg, err := scheduler.LoadConfig(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	return Components{Tokenizer: tok, TextEncoder: te, UNet: un, VAEDecoder: dec, VAEEncoder: enc, Scheduler: cfg,
		UNetTimestepPerItem: un.PerItemTimesteps()}
}

// TestParityWithDiffusers runs the reference request through the pipeline
// and compares the text embeddings, every step's latents and the final
// image with diffusers' own OnnxStableDiffusionPipeline run, through the
// public Request.OnStep hook (referenceDiffs).
func TestParityWithDiffusers(t *testing.T) {
	const tol = 1e-4
	text, steps, img := referenceDiffs(t, referenceComponents(t), testenv.LoadTinyReference(t))
	if text > tol {
		t.Errorf("text embeddings differ from diffusers by %g", text)
	}
	for i, d := range steps {
		if d > tol {
			t.Errorf("step %d: latents differ from diffusers by %g", i, d)
		}
	}
	if img > tol {
		t.Errorf("image differs from diffusers by %g", img)
	} else {
		t.Logf("max |Δ| image %.2g, last step latents %.2g", img, steps[len(steps)-1])
	}
}
