package server

import (
	"cmp"
	"math"
	"math/rand/v2"

	"github.com/sdpipe/sdpipe/sd"
)

// latentChannels is the latent depth of the model families the engine
// runs (SD 1.x, 2.x and XL); a model with another would refuse the
// variation latents with a clear error.
const latentChannels = 4

// variation sets up AUTOMATIC1111's variation seeds (subseed,
// subseed_strength) on c as A1111 computes them: with a strength, every
// image of the request has the same seed and its own subseed (subseed + i),
// and its initial noise is the seed's noise slerped towards the subseed's
// (sd.VariationNoise).
func (s *Server) variation(c *common, in *a1111Request) error {
	st := in.SubseedStrength
	if st == 0 {
		return nil
	}
	if math.IsNaN(st) || st < 0 || st > 1 {
		return badRequest("subseed_strength", "subseed_strength: %v is outside [0, 1]", st)
	}
	sub := int64(-1)
	if in.Subseed != nil {
		sub = *in.Subseed
	}
	per, n := max(c.perRequest, 1), max(c.requests, 1)
	if _, ok := product(s.cfg.MaxImages, c.perRequest, c.requests); !ok {
		return nil // build refuses the count
	}
	total := int64(per * n)
	switch {
	case sub == -1:
		sub = rand.Int64N(maxSeed - total + 2)
	case sub < 0 || sub > maxSeed-total+1:
		return badRequest("subseed", "subseed: %d is outside [0, %d] for %d images (or -1 for random)", sub, maxSeed-total+1, total)
	}
	in.Subseed = &sub
	next := sub // the subseed of the next image
	c.latents = func(seed int64, images int) ([]float32, error) {
		w, h := c.width, c.height
		if dw, dh := engineDefaults(s.eng); w == 0 || h == 0 {
			w, h = cmp.Or(w, dw), cmp.Or(h, dh)
		}
		if w == 0 || h == 0 {
			return nil, badRequest("width", "width and height: variation seeds need an explicit size")
		}
		var out []float32
		for range images {
			r := sd.Request{Width: w, Height: h}
			sd.UseA1111Noise(&r)
			noise, err := sd.VariationNoise(r, c.baseSeed, next, st, latentChannels)
			if err != nil {
				return nil, badRequest("subseed", "subseed: %v", err)
			}
			out = append(out, noise...)
			next++
		}
		return out, nil
	}
	c.subseed, c.subseedStrength = sub, st
	return nil
}
