package pipeline

import (
	"slices"
	"testing"
)

// TestAddedConditioningUnguided runs an SDXL-style model without guidance
// (SDXL-Turbo and Lightning use 0): one row per image, each with its
// prompt's pooled embedding and time ids, no negative prompt encoded into
// the UNet's rows.
func TestAddedConditioningUnguided(t *testing.T) {
	p, u, _ := addedPipeline(t, 64, 64)
	if _, err := p.Generate(t.Context(), Request{Prompt: "b", NegativePrompt: "a", Steps: 1, Seed: 1, ImagesPerPrompt: 2,
		GuidanceScale: new(0.0), Scheduler: "EulerDiscreteScheduler"}); err != nil {
		t.Fatal(err)
	}
	if len(u.pooled) != 1 {
		t.Fatalf("%d UNet calls, want 1", len(u.pooled))
	}
	b := float32('b' + 3)
	if got := u.pooled[0]; len(got) != 4 || got[0] != b || got[2] != b {
		t.Errorf("text_embeds %v, want the prompt's pooled embedding on each of 2 rows", got)
	}
	if want := []float32{64, 64, 0, 0, 64, 64, 64, 64, 0, 0, 64, 64}; !slices.Equal(u.timeID[0], want) {
		t.Errorf("time_ids %v, want %v", u.timeID[0], want)
	}
}
