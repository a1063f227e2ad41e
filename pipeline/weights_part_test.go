package pipeline

import (
	"math"
	"slices"
	"testing"
)

// TestApplyWeightsPerPart checks the emphasis of concatenated hidden states
// (SDXL): each encoder's part is weighted and gets its own mean back, the
// same as weighting that encoder's states alone, as AUTOMATIC1111 does per
// embedder; weighting the whole would mix the means.
func TestApplyWeightsPerPart(t *testing.T) {
	const tokens, h1, h2 = 5, 3, 4
	hidden := h1 + h2
	z := make([]float32, tokens*hidden)
	for i := range z {
		z[i] = float32(math.Sin(float64(i))) + 0.3
	}
	w := []float32{1, 1.3, 0.8, 1, 1.1}
	part := func(z []float32, off, width int) []float32 {
		var p []float32
		for t := range tokens {
			p = append(p, z[t*hidden+off:t*hidden+off+width]...)
		}
		return p
	}
	got := slices.Clone(z)
	for k, off := range partOffsets([]int{h1, h2}) {
		applyWeightsPart(got, w, hidden, off, []int{h1, h2}[k])
	}
	for _, p := range []struct{ off, width int }{{0, h1}, {h1, h2}} {
		alone := part(z, p.off, p.width)
		applyWeights(alone, w, p.width)
		if !slices.Equal(part(got, p.off, p.width), alone) {
			t.Errorf("part at %d: %v, want the part weighted alone %v", p.off, part(got, p.off, p.width), alone)
		}
	}
	whole := slices.Clone(z)
	applyWeights(whole, w, hidden)
	if slices.Equal(whole, got) {
		t.Error("weighting per part gave what weighting the whole does: the test shows nothing")
	}
	ones := slices.Clone(z)
	applyWeightsPart(ones, []float32{1, 1, 1, 1, 1}, hidden, h1, h2)
	if !slices.Equal(ones, z) {
		t.Error("all-one weights changed the states")
	}
}
