package pipeline

import (
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/scheduler"
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
	f := testenv.OpenFolder(t, dir)
	cfg, err := scheduler.LoadConfig(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	return Components{Tokenizer: f.Tokenizer, TextEncoder: f.TextEncoder, UNet: f.UNet, VAEDecoder: f.VAEDecoder, VAEEncoder: f.VAEEncoder,
		Scheduler: cfg, UNetTimestepPerItem: f.UNet.PerItemTimesteps()}
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
