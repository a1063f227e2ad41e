package sd

import (
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/rng"
)

// VariationNoise returns the initial noise of one image of r with
// AUTOMATIC1111's variation seed: the noise of seed and the noise of
// subseed, each drawn by r's generator as Request.Seed draws it,
// spherically interpolated by strength (0 gives seed's noise, 1
// subseed's) as A1111's slerp does it, for a latent of channels ×
// r.Height/8 × r.Width/8 values. Set the result (one image after another)
// as r.Latents.
//
// A1111 interpolates along the latent's rows: it normalises each column
// of each channel over the rows, and when the mean cosine of those
// columns is above 0.9995 it blends linearly instead (with the weights as
// A1111 has them, strength on seed's noise).
func VariationNoise(r Request, seed, subseed int64, strength float64, channels int) ([]float32, error) {
	g, width, height := rng.Kind(r.Generator), r.Width, r.Height
	switch {
	case channels < 1 || width < 8 || height < 8 || width%8 != 0 || height%8 != 0:
		return nil, fmt.Errorf("sd: variation noise: %d channels at %dx%d: want channels ≥ 1 and multiples of 8", channels, width, height)
	case math.IsNaN(strength) || strength < 0 || strength > 1:
		return nil, fmt.Errorf("sd: variation noise: strength %v is outside [0, 1]", strength)
	case seed < 0 || subseed < 0:
		return nil, fmt.Errorf("sd: variation noise: negative seed %d or subseed %d", seed, subseed)
	}
	if g == 0 {
		g = rng.KindNumpy // Request.Generator's default
	}
	h, w := height/8, width/8
	n := channels * h * w
	draw := func(s int64) ([]float32, error) {
		src, err := rng.New(g, uint64(s))
		if err != nil {
			return nil, fmt.Errorf("sd: variation noise: %w", err)
		}
		d := make([]float32, n)
		src.Randn(d)
		return d, nil
	}
	low, err := draw(seed)
	if err != nil {
		return nil, err
	}
	high, err := draw(subseed)
	if err != nil {
		return nil, err
	}
	// the cosine of each (channel, column) pair of vectors over the rows
	dot := make([]float64, channels*w)
	var mean float64
	for c := range channels {
		for x := range w {
			var nl, nh, d float64
			for y := range h {
				i := c*h*w + y*w + x
				l, hi := float64(low[i]), float64(high[i])
				nl += l * l
				nh += hi * hi
				d += l * hi
			}
			cos := d / (math.Sqrt(nl) * math.Sqrt(nh))
			dot[c*w+x] = cos
			mean += cos
		}
	}
	mean /= float64(len(dot))
	out := make([]float32, n)
	if mean > 0.9995 {
		for i := range out {
			out[i] = float32(float64(low[i])*strength + float64(high[i])*(1-strength))
		}
		return out, nil
	}
	for c := range channels {
		for x := range w {
			omega := math.Acos(dot[c*w+x])
			so := math.Sin(omega)
			a, b := math.Sin((1-strength)*omega)/so, math.Sin(strength*omega)/so
			for y := range h {
				i := c*h*w + y*w + x
				out[i] = float32(a*float64(low[i]) + b*float64(high[i]))
			}
		}
	}
	return out, nil
}

// UseA1111Noise makes r draw its noise as AUTOMATIC1111's "CPU" random
// source does (torch.randn on the CPU), so that a seed gives A1111's
// initial latents.
func UseA1111Noise(r *Request) { r.Generator = asKind(r.Generator, rng.KindTorchCPU) }

// IsA1111Noise reports whether r draws its noise as A1111's "CPU" source.
func IsA1111Noise(r Request) bool { return rng.Kind(r.Generator) == rng.KindTorchCPU }

func asKind[G ~int](_ G, k rng.Kind) G { return G(k) }
