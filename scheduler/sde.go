package scheduler

import (
	"math"
)

// DPMSDE is diffusers' DPMSolverSDEScheduler (k-diffusion's DPM++ SDE, two
// model evaluations per step). diffusers draws its noise from a Brownian
// tree; here Noise supplies the normalized increment that the step scales by
// sigma_up, so any Gaussian source can drive it (a replay of diffusers'
// increments reproduces its trajectory). It is not safe for concurrent use.
type DPMSDE struct {
	sigmaBase
	first  bool
	midSig float32
	saved  []float32
	x0     []float32
	rnd    []float32
}

func newDPMSDE(b *base) (Scheduler, error) {
	if b.p.predictionType == "sample" {
		return nil, &ConfigError{Field: "prediction_type", Reason: "sample is not supported by DPMSolverSDEScheduler"}
	}
	ts, sig, logSig := kdiffSchedule(b, true)
	// _second_order_timesteps in float64 numpy.
	second := make([]float64, 0, len(sig))
	for i := 0; i+1 < len(sig); i++ {
		t0, t1 := -math.Log(sig[i]), -math.Log(sig[i+1])
		tp := t0 + (t1-t0)*0.5
		second = append(second, float64(float32(sigmaToT(math.Exp(-tp), logSig))))
	}
	s := &DPMSDE{sigmaBase: twoStage(b, ts, sig, logSig, func(i int) float64 { return second[i] }), first: true}
	s.saved = make([]float32, b.size)
	s.x0 = make([]float32, b.size)
	s.rnd = make([]float32, b.size)
	return s, nil
}

// ScaleModelInput implements Scheduler.
func (s *DPMSDE) ScaleModelInput(dst, sample []float32, i int) {
	sigma := s.sigmas[s.stepStart+i]
	if !s.first {
		sigma = s.midSig
	}
	scaleBySigma(dst, sample, sigma)
}

func tFn(sigma float32) float32 { return -log32(sigma) }
func sigmaFn(t float32) float32 { return exp32(-t) }

// Step implements Scheduler.
func (s *DPMSDE) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	sigma, next := s.stageSigmas(k, s.first)
	t, tNext := tFn(sigma), tFn(next)
	tProp := t + float32((tNext-t)*0.5)
	input := sigma
	if !s.first {
		input = sigmaFn(tProp)
	}
	predX0(s.x0, mo, sample, input, s.p.predictionType)
	if next == 0 {
		dt := next - sigma
		for j := range sample {
			d := (sample[j] - s.x0[j]) / sigma
			sample[j] += float32(d * dt)
		}
		return nil
	}
	src := sample
	if s.first {
		tNext = tProp
	} else {
		src = s.saved
	}
	from, to := sigmaFn(t), sigmaFn(tNext)
	up := min(to, sqrt32(float32(float32(to*to)*(float32(from*from)-float32(to*to)))/float32(from*from)))
	down := sqrt32(float32(to*to) - float32(up*up))
	ancT := tFn(down)
	c1 := sigmaFn(ancT) / sigmaFn(t)
	c2 := float32(math.Expm1(float64(t - ancT)))
	s.noise.Randn(s.rnd)
	if s.first {
		for j := range sample {
			v := float32(c1*src[j]) - float32(c2*s.x0[j])
			s.saved[j] = src[j]
			sample[j] = v + float32(s.rnd[j]*up)
		}
		s.midSig = to
		s.first = false
		return nil
	}
	for j := range sample {
		v := float32(c1*src[j]) - float32(c2*s.x0[j])
		sample[j] = v + float32(s.rnd[j]*up)
	}
	s.first = true
	return nil
}
