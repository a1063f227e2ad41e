package models

import (
	"encoding/json"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/scheduler"
)

// openDefault opens the embedded model, materialised by DefaultDir, with
// the library's component packages, as sd.OpenFolder does, and returns a
// pipeline on it, closed at the end of the test.
func openDefault(t testing.TB) *pipeline.Pipeline {
	t.Helper()
	testenv.RequireORT(t)
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	return openDir(t, dir)
}

// openDir is openDefault on the model folder dir.
func openDir(t testing.TB, dir string) *pipeline.Pipeline {
	t.Helper()
	p, err := pipeline.New(openComponents(t, dir), pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// openComponents opens the models of the folder dir, closed at the end of
// the test.
func openComponents(t testing.TB, dir string) pipeline.Components {
	t.Helper()
	f := testenv.OpenFolder(t, dir)
	cfg, scaling := folderConfig(t, dir)
	if scaling <= 0 {
		t.Fatalf("vae_decoder/config.json: scaling_factor %v", scaling)
	}
	return pipeline.Components{
		Tokenizer: f.Tokenizer, TextEncoder: f.TextEncoder, UNet: f.UNet, VAEDecoder: f.VAEDecoder, VAEEncoder: f.VAEEncoder,
		Scheduler: cfg, ScalingFactor: scaling, UNetTimestepPerItem: f.UNet.PerItemTimesteps(),
	}
}

// folderConfig reads the scheduler config and the VAE decoder's scaling
// factor of the model folder dir.
func folderConfig(t testing.TB, dir string) (*scheduler.Config, float64) {
	t.Helper()
	cfg, err := scheduler.LoadConfig(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var vc struct {
		ScalingFactor float64 `json:"scaling_factor"`
	}
	if err := readJSON(filepath.Join(dir, "vae_decoder", "config.json"), &vc); err != nil {
		t.Fatal(err)
	}
	return cfg, vc.ScalingFactor
}

// defaultGuidance is the guidance scale the default model is meant for, as
// its sdpipe.json gives it.
func defaultGuidance(t testing.TB) float64 {
	t.Helper()
	b, err := fs.ReadFile(FS(), "sdpipe.json")
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Defaults struct {
			GuidanceScale float64 `json:"guidance_scale"`
		} `json:"defaults"`
	}
	if err := json.Unmarshal(b, &info); err != nil || info.Defaults.GuidanceScale == 0 {
		t.Fatalf("sdpipe.json: %v, guidance %v", err, info.Defaults.GuidanceScale)
	}
	return info.Defaults.GuidanceScale
}
