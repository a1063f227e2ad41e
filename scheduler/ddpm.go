package scheduler

import (
	"fmt"
	"math"
)

// predX0Alpha writes the x0 prediction of alphas_cumprod-parameterized
// schedulers (DDPM, LCM) into x0, then clips or thresholds it.
func predX0Alpha(x0, mo, sample, buf []float32, a float32, p *params) {
	convertX0(x0, mo, sample, sqrt32(a), sqrt32(1-a), p, buf) // thresholds
	if !p.thresholding && p.clipSample {
		clampAll(x0, float32(p.clipSampleRange))
	}
}

// predState is the x0 prediction, thresholding scratch and noise buffer
// of the alphas_cumprod samplers (DDIM, DDPM, LCM).
type predState struct{ x0, buf, rnd []float32 }

func newPredState(b *base) predState {
	s := predState{x0: make([]float32, b.size), rnd: make([]float32, b.size)}
	if b.p.thresholding {
		s.buf = make([]float32, b.size)
	}
	return s
}

// PredOriginal returns the x0 prediction of the last Step. The slice is
// owned by the scheduler and overwritten by the next Step.
func (s *predState) PredOriginal() []float32 { return s.x0 }

// DDPM is diffusers' DDPMScheduler (ancestral sampling of the denoising
// diffusion probabilistic model; draws one noise tensor per step with t > 0).
// It is not safe for concurrent use.
type DDPM struct {
	alphaBase
	predState
}

func newDDPM(b *base) (Scheduler, error) {
	switch b.p.varianceType {
	case "fixed_small", "fixed_small_log", "fixed_large":
	default:
		return nil, &ConfigError{Field: "variance_type", Reason: fmt.Sprintf("%q is not supported", b.p.varianceType)}
	}
	s := &DDPM{alphaBase: alphaBase{b}, predState: newPredState(b)}
	s.full = intTimesteps(b.p, b.n)
	return s, nil
}

// Step implements Scheduler.
func (s *DDPM) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.begin + i
	t := int(s.full[k])
	prevT := -1
	if k+1 < len(s.full) {
		prevT = int(s.full[k+1])
	}
	ac := s.ts.alphasCumprod
	a := ac[t]
	aPrev := float32(1)
	if prevT >= 0 {
		aPrev = ac[prevT]
	}
	b := 1 - a
	bPrev := 1 - aPrev
	curA := a / aPrev
	curB := 1 - curA
	predX0Alpha(s.x0, mo, sample, s.buf, a, s.p)
	c0 := float32(sqrt32(aPrev)*curB) / b
	c1 := float32(sqrt32(curA)*bPrev) / b
	for j := range sample {
		sample[j] = float32(c0*s.x0[j]) + float32(c1*sample[j])
	}
	if t > 0 {
		v := max(float32((1-aPrev)/(1-a))*curB, 1e-20)
		var std float32
		switch s.p.varianceType {
		case "fixed_small":
			std = sqrt32(v)
		case "fixed_small_log":
			std = exp32(float32(0.5 * log32(v)))
		case "fixed_large":
			std = sqrt32(curB)
		}
		s.noise.Randn(s.rnd)
		for j := range sample {
			sample[j] += float32(std * s.rnd[j])
		}
	}
	return nil
}

// LCM is diffusers' LCMScheduler (latent consistency models; draws noise
// between steps). The pipeline must decode Denoised() after the last step,
// which equals the final latents. It is not safe for concurrent use.
type LCM struct {
	alphaBase
	predState
	denoised []float32
}

func newLCM(b *base) (Scheduler, error) {
	p := b.p
	orig := p.origInferSteps
	N := p.numTrainTimesteps
	if orig < 1 || orig > N {
		return nil, &ConfigError{Field: "original_inference_steps", Reason: fmt.Sprintf("%d not in [1, %d]", orig, N)}
	}
	if b.n > orig {
		return nil, fmt.Errorf("%w: LCM steps %d exceed original_inference_steps %d", ErrOptions, b.n, orig)
	}
	k := N / orig
	origin := make([]float64, orig) // reversed: high to low
	for i := range orig {
		origin[orig-1-i] = float64((i+1)*k - 1)
	}
	ls := float64(len(origin)) / float64(b.n)
	s := &LCM{alphaBase: alphaBase{b}, predState: newPredState(b)}
	for i := range b.n {
		s.full = append(s.full, origin[int(math.Floor(float64(i)*ls))])
	}
	s.denoised = make([]float32, b.size)
	return s, nil
}

// Denoised returns the consistency-model output (diffusers' "denoised") of
// the last Step: what an LCM pipeline decodes. The slice is owned by the
// scheduler and overwritten by the next Step.
func (s *LCM) Denoised() []float32 { return s.denoised }

// Step implements Scheduler.
func (s *LCM) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.begin + i
	t := int(s.full[k])
	prevT := t
	if k+1 < len(s.full) {
		prevT = int(s.full[k+1])
	}
	a, aPrev := s.ts.alphaProds(t, prevT)
	bPrev := 1 - aPrev
	// get_scalings_for_boundary_condition_discrete
	const sigmaData = float32(0.25) // sigma_data**2 with sigma_data = 0.5
	st := float32(float64(t) * s.p.timestepScaling)
	st2 := float32(st*st) + sigmaData
	cSkip := sigmaData / st2
	cOut := st / sqrt32(st2)
	predX0Alpha(s.x0, mo, sample, s.buf, a, s.p)
	for j := range sample {
		s.denoised[j] = float32(cOut*s.x0[j]) + float32(cSkip*sample[j])
	}
	if k != s.n-1 {
		s.noise.Randn(s.rnd)
		sa, sb := sqrt32(aPrev), sqrt32(bPrev)
		for j := range sample {
			sample[j] = float32(sa*s.denoised[j]) + float32(sb*s.rnd[j])
		}
		return nil
	}
	copy(sample, s.denoised)
	return nil
}
