package pipeline

import (
	"slices"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/rng"
)

// TestBatchNoise: with NoiseOneGenerator one generator seeded with Seed
// draws the whole batch's initial noise at once, as diffusers and ComfyUI
// do: the images equal those of a request given that noise as Latents,
// the first equals a one-image request, and the second differs from the
// per-image default's (seed+1).
func TestBatchNoise(t *testing.T) {
	p, err := New(generated(t, modelgen.Options{}), Options{DefaultWidth: 64, DefaultHeight: 64, MaxBatch: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, kind := range []rng.Kind{rng.KindNumpy, rng.KindTorchCPU} {
		t.Run(kind.String(), func(t *testing.T) {
			base := Request{Prompt: "a red circle", Steps: 3, Seed: 5, Generator: kind, Scheduler: "Euler"}
			gen := func(r Request) *Result {
				t.Helper()
				res, err := p.Generate(t.Context(), r)
				if err != nil {
					t.Fatal(err)
				}
				return res
			}
			batch := base
			batch.ImagesPerPrompt, batch.BatchNoise = 2, NoiseOneGenerator
			got := gen(batch)

			g, err := rng.New(kind, 5)
			if err != nil {
				t.Fatal(err)
			}
			lat := make([]float32, 2*4*8*8)
			g.Randn(lat)
			given := base
			given.ImagesPerPrompt, given.Latents = 2, lat
			want := gen(given)

			one := gen(base)
			perImage := base
			perImage.ImagesPerPrompt = 2
			def := gen(perImage)
			for i := range 2 {
				if !samePixels(got.Images[i], want.Images[i]) {
					t.Errorf("image %d differs from the request given the batch's noise as Latents", i)
				}
			}
			if !samePixels(got.Images[0], one.Images[0]) {
				t.Error("image 0 of the batch differs from the one-image request")
			}
			if samePixels(got.Images[1], def.Images[1]) {
				t.Error("image 1 is the per-image default's (seed+1)")
			}
			if !slices.Equal(got.Seeds, []int64{5, 5}) {
				t.Errorf("seeds %v, want the batch's seed for both", got.Seeds)
			}
		})
	}
	if _, err := p.Generate(t.Context(), Request{Prompt: "x", Steps: 1, BatchNoise: 7}); err == nil {
		t.Error("an unknown noise mode was accepted")
	}
}
