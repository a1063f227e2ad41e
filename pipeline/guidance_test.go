package pipeline

import (
	"slices"
	"testing"
)

// TestNoGuidance checks that a guidance scale of 1 or less, 0 included,
// turns classifier-free guidance off as diffusers' do_classifier_free_guidance
// does: one UNet row per image at every step (no unconditional pass), and
// the prompt's prediction alone. The reference is a guided run whose
// negative prompt is the prompt: there uncond + g·(cond − uncond) is cond
// exactly, in any float arithmetic, so its latents are those of the
// conditional-only prediction. The unguided runs have another negative
// prompt, which would change their latents if its row were used.
func TestNoGuidance(t *testing.T) {
	const images, steps = 2, 4
	run := func(g float64, negative string) ([]float32, []int) {
		u := &fakeUNet{}
		p := newFake(t, u, 0, Options{})
		res, err := p.Generate(t.Context(), Request{Prompt: "a cat", NegativePrompt: negative, Steps: steps, Seed: 3,
			ImagesPerPrompt: images, GuidanceScale: new(g), Scheduler: "Euler"})
		if err != nil {
			t.Fatal(err)
		}
		if got := *res.Request.GuidanceScale; got != g {
			t.Errorf("guidance %v resolved to %v", g, got)
		}
		return slices.Clone(res.Pixels.Data().([]float32)), u.sizes
	}
	want, sizes := run(7.5, "a cat")
	if !slices.Equal(sizes, []int{2 * images, 2 * images, 2 * images, 2 * images}) {
		t.Fatalf("guided run: UNet batches %v, want %d rows per step", sizes, 2*images)
	}
	for _, g := range []float64{0, 0.5, 1} {
		got, sizes := run(g, "a dog")
		if !slices.Equal(sizes, []int{images, images, images, images}) {
			t.Errorf("guidance %v: UNet batches %v, want %d rows (one per image) at each of %d steps", g, sizes, images, steps)
		}
		if !slices.Equal(got, want) {
			t.Errorf("guidance %v: pixels differ from the conditional-only prediction's", g)
		}
	}
	// the reference itself must depend on the negative prompt, or the
	// comparison above could not fail
	if other, _ := run(7.5, "a dog"); slices.Equal(other, want) {
		t.Fatal("a guided run ignores its negative prompt: the test cannot tell rows apart")
	}
}
