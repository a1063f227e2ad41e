package vae

import (
	"context"
	"fmt"

	"gorgonia.org/tensor"
)

// Tiled decoding and encoding, as diffusers' AutoencoderKL does it with
// enable_tiling(): a large input is cut into overlapping square tiles, each
// tile runs through the model on its own (so a call's memory is one
// tile's), and the outputs are blended over the overlap with linear ramps.
//
// With tile_sample_min_size = tile pixels and tile_latent_min_size =
// tile/8 latents, and tile_overlap_factor 0.25 as in diffusers:
//
//   - tiles start every stride = tile/8 − ⌊tile/32⌋ latents (48 of 64),
//     in rows and columns, until the input ends; a tile at the right or
//     bottom edge is cut short where the input ends;
//   - each output tile is blended with the tile above it (blend_v) and then
//     with the tile to its left (blend_h), both already blended, over an
//     extent of e = min(both tiles' sizes, ⌊tile/32⌋ latents) output rows
//     (columns): row y < e of the tile becomes
//     above[len−e+y]·(1−y/e) + tile[y]·(y/e);
//   - each blended tile keeps its first stride (in output units) rows and
//     columns, and those crops, side by side, are the output.
//
// For a tile that is a multiple of 32 pixels these are exactly diffusers'
// overlap_size, blend_extent and row_limit (for 512: 48 latents, 128 and
// 384 pixels when decoding; 384 pixels, 16 and 48 latents when encoding);
// for other sizes diffusers' rounding would make the crops overlap or
// leave gaps, and the ones here stay consistent. An input no larger than
// one tile is not tiled: the call is the plain one, bit for bit. Unlike
// diffusers, only the previous row of blended tiles is kept, not all of
// them; the result is the same.

// MinTile is the smallest tile, in pixels: four latents, one of them in
// the overlap.
const MinTile = 4 * Factor

// checkTile checks a tile size in pixels.
func checkTile(tile int) error {
	if tile < MinTile || tile%Factor != 0 {
		return fmt.Errorf("%w: tile %d, want a multiple of %d of at least %d pixels", ErrInput, tile, Factor, MinTile)
	}
	return nil
}

// tileGeometry is the tiling of one input, in its units.
type tileGeometry struct {
	tile, stride int // in the input's units
	num, den     int // output units per input unit
}

func (g tileGeometry) out(n int) int { return n * g.num / g.den }

// runFunc runs the model on one tile [b, c, h, w] of the input and returns
// its output [b, oc, h·num/den, w·num/den].
type runFunc func(ctx context.Context, tile []float32, h, w int) ([]float32, error)

// tiled runs f over the overlapping tiles of x [b, c, h, w] and blends
// their outputs [b, oc, ·, ·] into one [b, oc, h·num/den, w·num/den].
func tiled(ctx context.Context, x []float32, b, c, h, w, oc int, g tileGeometry, f runFunc) ([]float32, error) {
	if h <= g.tile && w <= g.tile {
		return f(ctx, x, h, w)
	}
	oh, ow := g.out(h), g.out(w)
	ostride, blend := g.out(g.stride), g.out(g.tile-g.stride)
	out := make([]float32, b*oc*oh*ow)
	var starts []int
	for x0 := 0; x0 < w; x0 += g.stride {
		starts = append(starts, x0)
	}
	prev := make([][]float32, len(starts)) // the row above, blended
	cur := make([][]float32, len(starts))
	in := make([]float32, b*c*g.tile*g.tile)
	for y0 := 0; y0 < h; y0 += g.stride {
		th := min(g.tile, h-y0)
		for j, x0 := range starts {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			tw := min(g.tile, w-x0)
			t := in[:b*c*th*tw]
			for p := range b * c {
				for y := range th {
					copy(t[(p*th+y)*tw:(p*th+y+1)*tw], x[(p*h+y0+y)*w+x0:])
				}
			}
			o, err := f(ctx, t, th, tw)
			if err != nil {
				return nil, err
			}
			toh, tow := g.out(th), g.out(tw)
			if len(o) != b*oc*toh*tow {
				return nil, fmt.Errorf("vae: a %dx%d tile gave %d values, want %d", th, tw, len(o), b*oc*toh*tow)
			}
			if y0 > 0 {
				blendV(prev[j], o, b*oc, g.out(min(g.tile, h-(y0-g.stride))), toh, tow, blend)
			}
			if j > 0 {
				blendH(cur[j-1], o, b*oc, toh, g.out(min(g.tile, w-starts[j-1])), tow, blend)
			}
			cur[j] = o
			kh, kw := min(ostride, toh), min(ostride, tow)
			oy, ox := g.out(y0), g.out(x0)
			for p := range b * oc {
				for y := range kh {
					copy(out[(p*oh+oy+y)*ow+ox:][:kw], o[(p*toh+y)*tow:])
				}
			}
		}
		prev, cur = cur, prev
	}
	return out, nil
}

// blendV blends the first rows of tile t [planes, th, w] with the last
// rows of the tile a [planes, ah, w] above it, as diffusers' blend_v.
func blendV(a, t []float32, planes, ah, th, w, extent int) {
	e := min(ah, th, extent)
	for p := range planes {
		for y := range e {
			k := float32(y) / float32(e)
			ra := a[(p*ah+ah-e+y)*w:][:w]
			rt := t[(p*th+y)*w:][:w]
			for x := range rt {
				rt[x] = ra[x]*(1-k) + rt[x]*k
			}
		}
	}
}

// blendH blends the first columns of tile t [planes, h, tw] with the last
// columns of the tile a [planes, h, aw] to its left, as diffusers' blend_h.
func blendH(a, t []float32, planes, h, aw, tw, extent int) {
	e := min(aw, tw, extent)
	for p := range planes {
		for y := range h {
			ra := a[(p*h+y)*aw:][:aw]
			rt := t[(p*h+y)*tw:][:tw]
			for x := range e {
				k := float32(x) / float32(e)
				rt[x] = ra[aw-e+x]*(1-k) + rt[x]*k
			}
		}
	}
}

// latentGeometry returns the tiling of a latent input for tiles of tile
// pixels: tile/8 latents, an overlap of a quarter of that.
func latentGeometry(tile int) tileGeometry {
	t := tile / Factor
	return tileGeometry{tile: t, stride: t - t/4, num: Factor, den: 1}
}

// DecodeTiled is Decode in overlapping tiles of tile×tile pixels (tile/8
// latents; a multiple of 8, at least MinTile), blended as diffusers'
// AutoencoderKL.tiled_decode blends them (see the comment at the top of
// tile.go), so that a call's memory is one tile's. Latents no larger than
// one tile are decoded as Decode decodes them, bit for bit. The mid-block
// attention and the group norms of each tile see only that tile, so a
// tiled image differs from the untiled one, most on the seams.
func (d *Decoder) DecodeTiled(ctx context.Context, latents *tensor.Dense, tile int) (*tensor.Dense, error) {
	if err := checkTile(tile); err != nil {
		return nil, err
	}
	s := latents.Shape()
	if err := checkLatents(s, d.latentCh); err != nil {
		return nil, err
	}
	b, h, w := s[0], s[2], s[3]
	out, err := tiled(ctx, latents.Data().([]float32), b, d.latentCh, h, w, 3, latentGeometry(tile), func(ctx context.Context, t []float32, h, w int) ([]float32, error) {
		return d.decode(ctx, t, b, h, w)
	})
	if err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(b, 3, h*Factor, w*Factor), tensor.WithBacking(out)), nil
}

// EncodeTiled is Encode in overlapping tiles of tile×tile pixels (a
// multiple of 8, at least MinTile), blended as diffusers'
// AutoencoderKL.tiled_encode blends them (the distribution's parameters
// are blended, then the mean taken), so that a call's memory is one
// tile's. An image no larger than one tile is encoded as Encode encodes
// it, bit for bit.
func (e *Encoder) EncodeTiled(ctx context.Context, image *tensor.Dense, tile int) (*tensor.Dense, error) {
	if err := checkTile(tile); err != nil {
		return nil, err
	}
	s := image.Shape()
	if err := checkImage(s); err != nil {
		return nil, err
	}
	lg := latentGeometry(tile)
	g := tileGeometry{tile: tile, stride: lg.stride * Factor, num: 1, den: Factor}
	b := s[0]
	out, err := tiled(ctx, image.Data().([]float32), b, 3, s[2], s[3], e.outCh, g, func(ctx context.Context, t []float32, h, w int) ([]float32, error) {
		return e.encode(ctx, t, b, h, w)
	})
	if err != nil {
		return nil, err
	}
	return e.latents(out, b, s[2]/Factor, s[3]/Factor), nil
}
