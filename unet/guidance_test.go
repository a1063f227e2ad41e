package unet

import (
	"math"
	"testing"
)

// TestGuidanceEmbedding checks the embedding against its formula, computed
// here in float64 (diffusers' get_guidance_scale_embedding of w = g − 1,
// scaled by 1000: sin of the half-dim frequencies, then cos, zero-padded
// to an odd width). float32 rounding of the arguments (up to 7,500 rad)
// moves the values by at most about 1e-3.
func TestGuidanceEmbedding(t *testing.T) {
	for _, tc := range []struct {
		g   float64
		dim int
	}{{8.5, 16}, {2, 256}, {1, 8}, {4, 9}} {
		e := GuidanceEmbedding(tc.g, tc.dim, 3)
		if s := e.Shape(); len(s) != 2 || s[0] != 3 || s[1] != tc.dim {
			t.Fatalf("g %v dim %d: shape %v", tc.g, tc.dim, s)
		}
		d := e.Data().([]float32)
		half := tc.dim / 2
		for k := range tc.dim {
			var want float64
			if k < 2*half {
				f := math.Exp(-float64(k%half) * math.Log(10000) / float64(half-1))
				x := (tc.g - 1) * 1000 * f
				want = math.Sin(x)
				if k >= half {
					want = math.Cos(x)
				}
			}
			for r := range 3 {
				if got := float64(d[r*tc.dim+k]); math.Abs(got-want) > 1e-3 {
					t.Errorf("g %v dim %d row %d [%d] = %v, want %v", tc.g, tc.dim, r, k, got, want)
				}
			}
		}
	}
}
