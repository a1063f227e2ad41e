package scheduler

import (
	"math"
)

// sigmaBase is shared by the k-diffusion style schedulers that keep a float32
// sigma per model evaluation (Euler, Euler ancestral, LMS, Heun, KDPM2, ...).
type sigmaBase struct {
	*base
	sigmas    []float32 // one per evaluation plus the final sigma
	logSigmas []float32 // log of the training sigmas (float32)
}

// Sigmas returns the sigma of each model evaluation of the full schedule
// followed by the final sigma. The caller must not modify the slice.
func (s *sigmaBase) Sigmas() []float32 { return s.sigmas }

// InitNoiseSigma implements Scheduler.
func (s *sigmaBase) InitNoiseSigma() float64 { return kdiffInitNoiseSigma(s.p, s.sigmas) }

// ScaleModelInput implements Scheduler: the sample over sqrt(sigma²+1) at
// the step's sigma (KDPM2 and DPM++ SDE override it for their second
// evaluations).
func (s *sigmaBase) ScaleModelInput(dst, sample []float32, i int) {
	scaleBySigma(dst, sample, s.sigmas[s.stepStart+i])
}

// AddNoise implements Scheduler.
func (s *sigmaBase) AddNoise(dst, original, noise []float32) {
	sigmaAddNoise(dst, original, noise, s.sigmas[s.noiseIdx])
}

// kdiffSchedule computes float32-valued timesteps and the interpolated
// float64 sigmas (before the final sigma is appended) as EulerDiscrete,
// LMS, Heun and KDPM2 do in set_timesteps.
func kdiffSchedule(b *base, karrasAllowed bool) (ts []float64, sig []float64, logSig []float32) {
	p := b.p
	ts = spacedTimesteps(p, b.n)
	for i := range ts {
		ts[i] = float64(float32(ts[i]))
	}
	train := b.ts.trainSigmas()
	logSig = make([]float32, len(train))
	for i, s := range train {
		logSig[i] = npLogF32(s)
	}
	sig = make([]float64, len(ts))
	if p.interpolation == "log_linear" {
		// torch.linspace(log(sigmas[-1]), log(sigmas[0]), n + 1).exp()
		l := torchLinspace32(float32(math.Log(float64(train[len(train)-1]))), float32(math.Log(float64(train[0]))), b.n+1)
		sig = make([]float64, len(l))
		for i, v := range l {
			sig[i] = float64(exp32(v))
		}
	} else {
		for i, t := range ts {
			sig[i] = npInterp(t, train)
		}
	}
	if karrasAllowed && p.useKarras {
		sig = karras(p, sig[0], sig[len(sig)-1], b.n)
		for i, s := range sig {
			ts[i] = float64(float32(sigmaToT(s, logSig)))
		}
	}
	return ts, sig, logSig
}

// appendFinal appends the final sigma (zero or sigma_min) and rounds all
// sigmas to float32.
func appendFinal(b *base, sig []float64) []float32 {
	out := make([]float32, 0, len(sig)+1)
	for _, s := range sig {
		out = append(out, float32(s))
	}
	var last float32
	if b.p.finalSigmasType == "sigma_min" {
		a := b.ts.alphasCumprod[0]
		last = sqrt32((1 - a) / a)
	}
	return append(out, last)
}

// kdiffInitNoiseSigma is max(sigmas), scaled to sqrt(max^2+1) for leading
// spacing.
func kdiffInitNoiseSigma(p *params, sigmas []float32) float64 {
	var m float32
	for _, s := range sigmas {
		m = max(m, s)
	}
	if p.timestepSpacing == "linspace" || p.timestepSpacing == "trailing" {
		return float64(m)
	}
	return float64(sqrt32(float32(m*m) + 1))
}

// scaleBySigma writes sample / sqrt(sigma^2 + 1).
func scaleBySigma(dst, sample []float32, sigma float32) {
	d := sqrt32(float32(sigma*sigma) + 1)
	for j := range dst {
		dst[j] = sample[j] / d
	}
}

// predX0 writes the k-diffusion x0 prediction for sigma into x0.
func predX0(x0, mo, sample []float32, sigma float32, predictionType string) {
	switch predictionType {
	case "epsilon":
		for j := range x0 {
			x0[j] = sample[j] - float32(sigma*mo[j])
		}
	case "v_prediction":
		s2 := float32(sigma*sigma) + 1
		c := -sigma / sqrt32(s2)
		for j := range x0 {
			x0[j] = float32(mo[j]*c) + sample[j]/s2
		}
	case "sample":
		copy(x0, mo)
	}
}

// sigmaAddNoise writes original + noise * sigma.
func sigmaAddNoise(dst, original, noise []float32, sigma float32) {
	for j := range dst {
		dst[j] = original[j] + float32(noise[j]*sigma)
	}
}

// Euler is diffusers' EulerDiscreteScheduler (Euler's method, s_churn = 0).
// It is not safe for concurrent use.
type Euler struct {
	sigmaBase
	x0 []float32
}

func newEuler(b *base) (Scheduler, error) {
	ts, sig, logSig := kdiffSchedule(b, true)
	s := &Euler{sigmaBase: sigmaBase{base: b, logSigmas: logSig}}
	s.sigmas = appendFinal(b, sig)
	if b.p.timestepType == "continuous" && b.p.predictionType == "v_prediction" {
		for i := range ts {
			ts[i] = float64(float32(0.25) * log32(s.sigmas[i]))
		}
	}
	s.full = ts
	s.x0 = make([]float32, b.size)
	return s, nil
}

// PredOriginal returns the x0 prediction of the last Step. The slice is
// owned by the scheduler and overwritten by the next Step.
func (s *Euler) PredOriginal() []float32 { return s.x0 }

// Step implements Scheduler.
func (s *Euler) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	sigma := s.sigmas[k]
	predX0(s.x0, mo, sample, sigma, s.p.predictionType)
	dt := s.sigmas[k+1] - sigma
	for j := range sample {
		d := (sample[j] - s.x0[j]) / sigma
		sample[j] += float32(d * dt)
	}
	return nil
}

// EulerAncestral is diffusers' EulerAncestralDiscreteScheduler (ancestral
// sampling with Euler steps; draws one noise tensor per step). It is not
// safe for concurrent use.
type EulerAncestral struct {
	sigmaBase
	x0  []float32
	rnd []float32
}

func newEulerAncestral(b *base) (Scheduler, error) {
	if b.p.predictionType == "sample" {
		return nil, &ConfigError{Field: "prediction_type", Reason: "sample is not supported by EulerAncestralDiscreteScheduler"}
	}
	ts, sig, logSig := kdiffSchedule(b, false)
	s := &EulerAncestral{sigmaBase: sigmaBase{base: b, logSigmas: logSig}}
	s.sigmas = appendFinal(b, sig)
	s.full = ts
	s.x0 = make([]float32, b.size)
	s.rnd = make([]float32, b.size)
	return s, nil
}

// Step implements Scheduler.
func (s *EulerAncestral) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	sigma := s.sigmas[k]
	predX0(s.x0, mo, sample, sigma, s.p.predictionType)
	from, to := sigma, s.sigmas[k+1]
	up := sqrt32(float32(float32(to*to)*(float32(from*from)-float32(to*to))) / float32(from*from))
	down := sqrt32(float32(to*to) - float32(up*up))
	dt := down - sigma
	for j := range sample {
		d := (sample[j] - s.x0[j]) / sigma
		sample[j] += float32(d * dt)
	}
	s.noise.Randn(s.rnd)
	for j := range sample {
		sample[j] += float32(s.rnd[j] * up)
	}
	return nil
}
