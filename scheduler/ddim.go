package scheduler

import (
	"math"
	"slices"
)

// DDIM is diffusers' DDIMScheduler (denoising diffusion implicit models;
// stochastic when Options.Eta > 0). It is not safe for concurrent use.
type DDIM struct {
	alphaBase
	predState
	stepRatio int
}

// intTimesteps returns the integer timesteps of DDIM/DDPM/LCM-style
// schedulers for timestep_spacing, high to low.
func intTimesteps(p *params, n int) []float64 {
	N := p.numTrainTimesteps
	ts := make([]float64, 0, n+1)
	switch p.timestepSpacing {
	case "linspace":
		ls := npLinspace(0, float64(N-1), n)
		for i := n - 1; i >= 0; i-- {
			ts = append(ts, npRound(ls[i]))
		}
	case "leading":
		ratio := N / n
		for i := n - 1; i >= 0; i-- {
			ts = append(ts, float64(i*ratio+p.stepsOffset))
		}
	case "trailing":
		for _, x := range npArange(float64(N), 0, -float64(N)/float64(n)) {
			ts = append(ts, npRound(x)-1)
		}
	}
	return ts
}

func newDDIM(b *base) (Scheduler, error) {
	s := &DDIM{alphaBase: alphaBase{b}, predState: newPredState(b), stepRatio: b.p.numTrainTimesteps / b.n}
	s.full = intTimesteps(b.p, b.n)
	return s, nil
}

// Step implements Scheduler.
func (s *DDIM) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	t := int(s.full[s.begin+i])
	prevT := t - s.stepRatio
	a, aPrev := s.ts.alphaProds(t, prevT)
	b := 1 - a
	sa, sb := sqrt32(a), sqrt32(b)
	x0 := s.x0
	eps := s.rnd // pred_epsilon scratch, reused for noise after use
	p := s.p
	switch p.predictionType {
	case "epsilon":
		for j := range x0 {
			x0[j] = (sample[j] - float32(sb*mo[j])) / sa
			eps[j] = mo[j]
		}
	case "sample":
		for j := range x0 {
			x0[j] = mo[j]
			eps[j] = (sample[j] - float32(sa*x0[j])) / sb
		}
	case "v_prediction":
		for j := range x0 {
			x0[j] = float32(sa*sample[j]) - float32(sb*mo[j])
			eps[j] = float32(sa*mo[j]) + float32(sb*sample[j])
		}
	}
	if p.thresholding {
		thresholdSample(x0, s.buf, p.dynThreshRatio, p.sampleMaxValue)
	} else if p.clipSample {
		clampAll(x0, float32(p.clipSampleRange))
	}
	// variance = (beta_prev / beta) * (1 - a / a_prev)
	variance := float32((1-aPrev)/b) * (1 - a/aPrev)
	std := float32(s.eta) * sqrt32(variance)
	dirC := sqrt32(1 - aPrev - std*std)
	saPrev := sqrt32(aPrev)
	for j := range sample {
		sample[j] = float32(saPrev*x0[j]) + float32(dirC*eps[j])
	}
	if s.eta > 0 {
		s.noise.Randn(s.rnd)
		for j := range sample {
			sample[j] += float32(std * s.rnd[j])
		}
	}
	return nil
}

// clampAll clamps x to [-r, r] in place.
func clampAll(x []float32, r float32) {
	for j, v := range x {
		x[j] = min(max(v, -r), r)
	}
}

// thresholdSample is diffusers' dynamic thresholding (_threshold_sample) for
// one sample: s = clamp(quantile(|x|, ratio), 1, maxValue), x =
// clamp(x, -s, s) / s. buf is scratch of len(x).
func thresholdSample(x, buf []float32, ratio, maxValue float64) {
	for j, v := range x {
		buf[j] = float32(math.Abs(float64(v)))
	}
	slices.Sort(buf)
	rank := float32(ratio) * float32(len(buf)-1)
	lo := int(rank)
	hi := min(int(math.Ceil(float64(rank))), len(buf)-1)
	w := rank - float32(lo)
	a, b := buf[lo], buf[hi]
	var q float32
	if w < 0.5 {
		q = a + w*(b-a)
	} else {
		q = b - (b-a)*(1-w)
	}
	q = min(max(q, 1), float32(maxValue))
	for j, v := range x {
		x[j] = min(max(v, -q), q) / q
	}
}
