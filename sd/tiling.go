package sd

import (
	"context"
	"fmt"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/vae"
)

// Tiled VAE: a request whose plain VAE decode would not fit the memory
// budget, but whose tiled decode would, decodes (and, for img2img,
// encodes) in overlapping tiles (vae.Decoder.DecodeTiled): the memory of a
// VAE call is then one tile's. Memory admission decides it per request
// (memory.go) and hands the tile size to the wrapped components through
// the request's context, which the engine passes to every model call.

// tilingConfig is what WithTiledVAE records.
type tilingConfig struct {
	when Switch // On: always; Off: never; 0: when admission needs it
	tile int    // pixels; 0: the model's native size
}

func (c tilingConfig) check() []error {
	if !c.when.valid() {
		return []error{fmt.Errorf("sd: WithTiledVAE: %d is not 0 (automatic), On or Off", c.when)}
	}
	if c.tile != 0 && (c.tile < vae.MinTile || c.tile%8 != 0 || c.tile > MaxSize) {
		return []error{fmt.Errorf("sd: WithTiledVAE: tile %d is not 0 (the model's size) or a multiple of 8 from %d to %d", c.tile, vae.MinTile, MaxSize)}
	}
	return nil
}

// WithTiledVAE sets when the VAE decodes images (and encodes img2img's
// init images) larger than a tile in overlapping tiles of tile×tile pixels,
// blended as diffusers' AutoencoderKL tiling blends them
// (vae.Decoder.DecodeTiled), so that a VAE call needs one tile's memory:
// On always, Off never, and by default (0) only when memory admission
// (WithMemoryBudget) says the plain decode would not fit the budget but
// the tiled one does; MemoryEstimate.VAETile says which a request gets. A
// tiled image differs from the untiled one, most on the seams. tile is a
// multiple of 8 of at least vae.MinTile pixels; 0 means the model's native
// size (its UNet's sample_size × 8: 512 for SD 1.5), the size it decodes
// best at, and, for automatic tiling when that does not fit, half of it.
func WithTiledVAE(when Switch, tile int) EngineOption {
	return func(c *engineConfig) { c.memory.tiling = tilingConfig{when: when, tile: tile} }
}

// vaeTiles returns the tiles admission tries, largest first: c's tile, or
// when c leaves it to the model its native size (its UNet's sample_size ×
// 8, else 512) and, when tiling is automatic, half of that.
func vaeTiles(c tilingConfig, f *Folder) []int {
	if c.tile > 0 {
		return []int{c.tile}
	}
	t := 512
	if f.sampleSize > 0 {
		t = max(f.sampleSize*8, vae.MinTile)
	}
	if half := t / 2 / 8 * 8; c.when == 0 && half >= vae.MinTile {
		return []int{t, half}
	}
	return []int{t}
}

type vaeTileKey struct{}

// withVAETile returns ctx carrying the VAE tile of a request (0: untiled).
func withVAETile(ctx context.Context, tile int) context.Context {
	if tile == 0 {
		return ctx
	}
	return context.WithValue(ctx, vaeTileKey{}, tile)
}

func vaeTile(ctx context.Context) int {
	t, _ := ctx.Value(vaeTileKey{}).(int)
	return t
}

// tiledComponents returns c with the folder's VAE halves wrapped so that a
// request admitted with a tile decodes and encodes tiled.
func tiledComponents(c pipeline.Components, f *Folder) pipeline.Components {
	if d := f.VAEDecoder; d != nil {
		c.VAEDecoder = pipeline.DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
			if t := vaeTile(ctx); t > 0 {
				return d.DecodeTiled(ctx, lat, t)
			}
			return d.Decode(ctx, lat)
		})
	}
	if e := f.VAEEncoder; e != nil {
		c.VAEEncoder = pipeline.ImageEncoderFunc(func(ctx context.Context, img *tensor.Dense) (*tensor.Dense, error) {
			if t := vaeTile(ctx); t > 0 {
				return e.EncodeTiled(ctx, img, t)
			}
			return e.Encode(ctx, img)
		})
	}
	return c
}
