package vae

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"
)

// fakeDecode is a stand-in decoder with what makes tiles differ in a real
// one: each output pixel depends on its latent and on the mean of the
// whole call's input (as a group norm's statistics do).
func fakeDecode(up int, global bool) runFunc {
	return func(_ context.Context, t []float32, h, w int) ([]float32, error) {
		planes := len(t) / (h * w)
		var mean float32
		if global {
			for _, v := range t {
				mean += v
			}
			mean /= float32(len(t))
		}
		out := make([]float32, len(t)*up*up)
		oh, ow := h*up, w*up
		for p := range planes {
			for y := range oh {
				for x := range ow {
					out[(p*oh+y)*ow+x] = t[(p*h+y/up)*w+x/up] + mean
				}
			}
		}
		return out, nil
	}
}

// diffusersTiled is diffusers' AutoencoderKL.tiled_decode transcribed
// literally, for the fake decoder's output: every tile kept, blended in
// place in order, cropped and concatenated.
func diffusersTiled(x []float32, planes, h, w, tileLat, up int, f runFunc) []float32 {
	overlap := int(float64(tileLat) * (1 - 0.25))
	blendExtent := int(float64(tileLat*up) * 0.25)
	rowLimit := tileLat*up - blendExtent
	type tile struct {
		d      []float32
		oh, ow int
	}
	var rows [][]tile
	for i := 0; i < h; i += overlap {
		var row []tile
		for j := 0; j < w; j += overlap {
			th, tw := min(tileLat, h-i), min(tileLat, w-j)
			in := make([]float32, planes*th*tw)
			for p := range planes {
				for y := range th {
					copy(in[(p*th+y)*tw:][:tw], x[(p*h+i+y)*w+j:])
				}
			}
			d, _ := f(context.Background(), in, th, tw)
			row = append(row, tile{d, th * up, tw * up})
		}
		rows = append(rows, row)
	}
	oh, ow := h*up, w*up
	out := make([]float32, planes*oh*ow)
	for i, row := range rows {
		for j, t := range row {
			if i > 0 { // blend_v
				a := rows[i-1][j]
				e := min(a.oh, t.oh, blendExtent)
				for p := range planes {
					for y := range e {
						for xx := range t.ow {
							k := float32(y) / float32(e)
							t.d[(p*t.oh+y)*t.ow+xx] = a.d[(p*a.oh+a.oh-e+y)*a.ow+xx]*(1-k) + t.d[(p*t.oh+y)*t.ow+xx]*k
						}
					}
				}
			}
			if j > 0 { // blend_h
				a := row[j-1]
				e := min(a.ow, t.ow, blendExtent)
				for p := range planes {
					for y := range t.oh {
						for xx := range e {
							k := float32(xx) / float32(e)
							t.d[(p*t.oh+y)*t.ow+xx] = a.d[(p*a.oh+y)*a.ow+a.ow-e+xx]*(1-k) + t.d[(p*t.oh+y)*t.ow+xx]*k
						}
					}
				}
			}
			for p := range planes {
				for y := range min(rowLimit, t.oh) {
					for xx := range min(rowLimit, t.ow) {
						out[(p*oh+i*rowLimit+y)*ow+j*rowLimit+xx] = t.d[(p*t.oh+y)*t.ow+xx]
					}
				}
			}
		}
	}
	return out
}

// TestTiledMatchesDiffusers checks the tiling against diffusers' algorithm
// transcribed literally, on sizes that tile evenly, leave short tiles at
// the edges, or fit one tile, and checks that without a global statistic
// tiling changes nothing beyond rounding.
func TestTiledMatchesDiffusers(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct{ tile, h, w int }{
		{64 * 8, 64, 64}, {64 * 8, 128, 96}, {64 * 8, 100, 70}, {64 * 8, 112, 160}, {64 * 8, 65, 64},
		{8 * 8, 24, 32}, {8 * 8, 20, 9}, {32, 13, 7},
	} {
		const planes = 2 // batch × channels
		x := make([]float32, planes*c.h*c.w)
		for i := range x {
			x[i] = float32(r.NormFloat64())
		}
		g := latentGeometry(c.tile)
		got, err := tiled(t.Context(), x, 1, planes, c.h, c.w, planes, g, fakeDecode(Factor, true))
		if err != nil {
			t.Fatal(err)
		}
		want := diffusersTiled(x, planes, c.h, c.w, c.tile/Factor, Factor, fakeDecode(Factor, true))
		if c.h <= c.tile/Factor && c.w <= c.tile/Factor {
			want, _ = fakeDecode(Factor, true)(t.Context(), x, c.h, c.w)
		}
		if d := maxDiff(got, want); d != 0 {
			t.Errorf("tile %d, %dx%d: differs from diffusers' tiling by %g", c.tile, c.h, c.w, d)
		}
		local, _ := tiled(t.Context(), x, 1, planes, c.h, c.w, planes, g, fakeDecode(Factor, false))
		plain, _ := fakeDecode(Factor, false)(t.Context(), x, c.h, c.w)
		if d := maxDiff(local, plain); d > 1e-6 {
			t.Errorf("tile %d, %dx%d: a local decoder's tiled output differs by %g", c.tile, c.h, c.w, d)
		}
	}
	if _, err := tiled(t.Context(), make([]float32, 2*16*16), 1, 2, 16, 16, 2, latentGeometry(64), func(context.Context, []float32, int, int) ([]float32, error) {
		return make([]float32, 3), nil
	}); err == nil {
		t.Error("a tile of the wrong size was accepted")
	}
	if err := checkTile(60); err == nil {
		t.Error("tile 60 accepted")
	}
}

func maxDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	var d float64
	for i := range a {
		d = max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}
