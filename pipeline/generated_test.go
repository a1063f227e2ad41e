package pipeline

import (
	"fmt"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// generated writes a tiny generated model with options o.
func generated(t *testing.T, o modelgen.Options) Components {
	t.Helper()
	testenv.RequireORT(t)
	dir := t.TempDir()
	if err := modelgen.Write(dir, modelgen.Tiny(), o); err != nil {
		t.Fatal(err)
	}
	return componentsFrom(t, dir)
}

// TestGeneratedModelsEndToEnd runs the real stages on generated tiny models
// of each I/O variant: txt2img with and without guidance, img2img, several
// schedulers and several requests in flight.
func TestGeneratedModelsEndToEnd(t *testing.T) {
	variants := map[string]modelgen.Options{
		"default":           {},
		"int64 ids":         {IDs: onnxpb.Int64},
		"int64 timestep":    {Timestep: onnxpb.Int64},
		"scalar timestep":   {TimestepShape: modelgen.TimestepScalar},
		"timestep [1]":      {TimestepShape: modelgen.TimestepOne},
		"fp16":              {FP16: true},
		"latent_parameters": {LatentParameters: true},
		"fixed batch 1":     {Batch: 1},
	}
	for name, o := range variants {
		t.Run(name, func(t *testing.T) {
			p, err := New(generated(t, o), Options{DefaultWidth: 64, DefaultHeight: 64, MaxBatch: 4, MaxBatchWait: 20e6})
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			reqs := []Request{
				{Prompt: "a red circle", Steps: 3, Seed: 1},
				{Prompt: "a blue square", Steps: 3, Seed: 2, GuidanceScale: new(1.0)},
				{Prompt: "a green triangle", Steps: 3, Seed: 3, Scheduler: "Euler a", ImagesPerPrompt: 2},
				{Prompt: "a cat", Steps: 3, Seed: 4, Scheduler: "DPM++ 2M Karras"},
			}
			res := generateAll(t, p, reqs)
			for _, r := range res {
				if r != nil {
					checkFinite(t, r)
				}
			}
			if res[0] == nil {
				return
			}
			r2, err := p.Generate(t.Context(), Request{Prompt: "a red circle", Steps: 4, Seed: 5, InitImage: res[0].Images[0], Strength: 0.6, Scheduler: "DDIM"})
			if err != nil {
				t.Fatalf("img2img: %v", err)
			}
			checkFinite(t, r2)
			if want := "2"; fmt.Sprint(r2.Metrics.Steps) != want { // int(4·0.6) steps of the schedule
				t.Errorf("img2img made %d UNet calls, want %s", r2.Metrics.Steps, want)
			}
		})
	}
}
