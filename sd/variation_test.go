package sd

import (
	"math"
	"testing"

	"github.com/sdpipe/sdpipe/rng"
)

func TestVariationNoise(t *testing.T) {
	draw := func(seed int64) []float32 {
		src, err := rng.New(rng.KindTorchCPU, uint64(seed))
		if err != nil {
			t.Fatal(err)
		}
		d := make([]float32, 4*8*8)
		src.Randn(d)
		return d
	}
	low, high := draw(1), draw(2)
	req := Request{Width: 64, Height: 64}
	UseA1111Noise(&req)
	if !IsA1111Noise(req) {
		t.Fatal("UseA1111Noise did not set the torch CPU generator")
	}
	for _, tc := range []struct {
		strength float64
		want     []float32
	}{{0, low}, {1, high}} {
		got, err := VariationNoise(req, 1, 2, tc.strength, 4)
		if err != nil {
			t.Fatal(err)
		}
		for i := range got {
			if math.Abs(float64(got[i]-tc.want[i])) > 1e-5 {
				t.Fatalf("strength %v: value %d is %v, want %v", tc.strength, i, got[i], tc.want[i])
			}
		}
	}
	// halfway: each (channel, column) vector over the rows keeps about
	// the norm of its ends (a slerp, not a lerp, which shrinks it)
	mid, err := VariationNoise(req, 1, 2, 0.5, 4)
	if err != nil {
		t.Fatal(err)
	}
	var nm, nl float64
	for i := range mid {
		nm += float64(mid[i]) * float64(mid[i])
		nl += float64(low[i]) * float64(low[i])
	}
	if r := math.Sqrt(nm / nl); r < 0.85 || r > 1.15 {
		t.Errorf("norm ratio %v at strength 0.5, want about 1", r)
	}
	if _, err := VariationNoise(req, 1, 2, 1.5, 4); err == nil {
		t.Error("strength 1.5 accepted")
	}
}
