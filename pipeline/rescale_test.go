package pipeline

import (
	"math"
	"math/rand/v2"
	"testing"
)

// rescaleNoiseCFG is diffusers' rescale_noise_cfg (StableDiffusionPipeline,
// section 3.4 of "Common Diffusion Noise Schedules and Sample Steps are
// Flawed") for one image, written from its source:
//
//	std_text = noise_pred_text.std(dim=list(range(1, ndim)), keepdim=True)
//	std_cfg = noise_cfg.std(dim=list(range(1, ndim)), keepdim=True)
//	noise_pred_rescaled = noise_cfg * (std_text / std_cfg)
//	noise_cfg = guidance_rescale * noise_pred_rescaled + (1 - guidance_rescale) * noise_cfg
//
// torch.std is the unbiased (n-1) estimate.
func rescaleNoiseCFG(cfg, text []float64, r float64) []float64 {
	sd := func(x []float64) float64 {
		var m float64
		for _, v := range x {
			m += v
		}
		m /= float64(len(x))
		var s float64
		for _, v := range x {
			s += (v - m) * (v - m)
		}
		return math.Sqrt(s / float64(len(x)-1))
	}
	k := sd(text) / sd(cfg)
	out := make([]float64, len(cfg))
	for i, v := range cfg {
		out[i] = r*(v*k) + (1-r)*v
	}
	return out
}

// TestGuidanceRescale checks the engine's guidance rescale against
// diffusers' formula on random predictions, per image, within 2e-6
// relative (float32 storage of float64 arithmetic), and on a case with a
// known answer: a text prediction twice the guided one has twice its
// standard deviation, so the result is cfg·(2r + 1 − r).
func TestGuidanceRescale(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	const n = 4 * 8 * 8
	for _, r := range []float64{0.3, 0.7, 1} {
		u, c := make([]float32, n), make([]float32, n)
		for i := range u {
			u[i] = float32(rnd.NormFloat64())
			c[i] = float32(0.5*rnd.NormFloat64() + 0.2)
		}
		guide(u, c, 7.5)
		cfg, text := make([]float64, n), make([]float64, n)
		for i := range u {
			cfg[i], text[i] = float64(u[i]), float64(c[i])
		}
		want := rescaleNoiseCFG(cfg, text, r)
		rescale(u, c, r)
		for i := range u {
			if d := math.Abs(float64(u[i]) - want[i]); d > 2e-6*math.Max(1, math.Abs(want[i])) {
				t.Fatalf("rescale %v: value %d is %v, diffusers' formula gives %v", r, i, u[i], want[i])
			}
		}

		cfg2, text2 := make([]float32, n), make([]float32, n)
		for i := range cfg2 {
			cfg2[i] = float32(rnd.NormFloat64())
			text2[i] = 2 * cfg2[i]
		}
		orig := append([]float32(nil), cfg2...)
		rescale(cfg2, text2, r)
		for i, v := range cfg2 {
			want := float64(orig[i]) * (2*r + 1 - r)
			if math.Abs(float64(v)-want) > 2e-6*math.Max(1, math.Abs(want)) {
				t.Fatalf("rescale %v, text = 2·cfg: value %d is %v, want %v", r, i, v, want)
			}
		}
	}
}
