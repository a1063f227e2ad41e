package half

import (
	"math"
	"testing"
)

func TestHalfRoundTrip(t *testing.T) {
	// Every finite half value must survive half -> float32 -> half exactly.
	for h := 0; h < 1<<16; h++ {
		f := ToFloat32(uint16(h))
		if f != f { // NaN
			if got := FromFloat32(f); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Fatalf("NaN %#04x -> %#04x", h, got)
			}
			continue
		}
		if got := FromFloat32(f); got != uint16(h) {
			t.Fatalf("%#04x -> %g -> %#04x", h, f, got)
		}
	}
}

func TestFloat32ToHalfRounding(t *testing.T) {
	tests := []struct {
		in   float32
		want uint16
	}{
		{1, 0x3c00},
		{-2, 0xc000},
		{65504, 0x7bff},
		{65520, 0x7c00},                  // rounds up to Inf
		{1 + 1.0/2048, 0x3c00},           // tie, even stays
		{1 + 3.0/2048, 0x3c02},           // tie, odd rounds up
		{float32(math.Ldexp(1, -24)), 1}, // smallest subnormal
		{float32(math.Ldexp(1, -25)), 0}, // tie to even zero
		{float32(math.Ldexp(1.5, -25)), 1},
		{float32(math.Inf(-1)), 0xfc00},
		{1e-10, 0},
	}
	for _, tc := range tests {
		if got := FromFloat32(tc.in); got != tc.want {
			t.Errorf("FromFloat32(%g) = %#04x, want %#04x", tc.in, got, tc.want)
		}
	}
}
