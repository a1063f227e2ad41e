package scheduler

import (
	"fmt"
)

// dpmSchedule computes the integer timesteps and float32 sigmas (with the
// final sigma appended) of the DPM-Solver family (DPMSolverMultistep, UniPC,
// DEIS) as their set_timesteps does.
func dpmSchedule(b *base) ([]float64, []float32) {
	var ts []float64
	p, n, N := b.p, b.n, b.p.numTrainTimesteps
	last := N // lambda_min_clipped = -inf: no clipping
	switch p.timestepSpacing {
	case "linspace":
		ls := npLinspace(0, float64(last-1), n+1)
		for i := n; i >= 1; i-- {
			ts = append(ts, npRound(ls[i]))
		}
	case "leading":
		ratio := last / (n + 1)
		for i := n; i >= 1; i-- {
			ts = append(ts, float64(i*ratio+p.stepsOffset))
		}
	case "trailing":
		for _, x := range npArange(float64(last), 0, -float64(N)/float64(n)) {
			ts = append(ts, npRound(x)-1)
		}
	}
	return dpmSigmas(b, ts)
}

// dpmSigmas computes the float32 sigmas of integer timesteps ts (replacing
// ts by the Karras timesteps when use_karras_sigmas), final sigma included.
func dpmSigmas(b *base, ts []float64) ([]float64, []float32) {
	p, n := b.p, b.n
	var sigmas []float32
	train := b.ts.trainSigmas()
	if p.useKarras {
		logSig := make([]float32, len(train))
		for i, s := range train {
			logSig[i] = npLogF32(s)
		}
		sig := karras(p, float64(train[len(train)-1]), float64(train[0]), n)
		ts = ts[:0]
		for _, s := range sig {
			ts = append(ts, npRound(sigmaToT(s, logSig)))
		}
		sigmas = make([]float32, 0, n+1)
		for _, s := range sig {
			sigmas = append(sigmas, float32(s))
		}
		var lastSigma float32
		if p.finalSigmasType == "sigma_min" || p.class == "DEISMultistepScheduler" {
			lastSigma = float32(sig[len(sig)-1])
		}
		return ts, append(sigmas, lastSigma)
	}
	sigmas = make([]float32, 0, len(ts)+1)
	for _, t := range ts {
		sigmas = append(sigmas, float32(npInterp(t, train)))
	}
	var lastSigma float32
	if p.finalSigmasType == "sigma_min" || p.class == "DEISMultistepScheduler" {
		a := b.ts.alphasCumprod[0]
		lastSigma = sqrt32((1 - a) / a)
	}
	return ts, append(sigmas, lastSigma)
}

// alphaSigma is _sigma_to_alpha_sigma_t in float32.
func alphaSigma(sigma float32) (alpha, sigmaT float32) {
	alpha = 1 / sqrt32(float32(sigma*sigma)+1)
	return alpha, float32(sigma * alpha)
}

// lambda returns log(alpha) - log(sigma) in float32.
func lambda(alpha, sigma float32) float32 { return log32(alpha) - log32(sigma) }

// DPMMultistep is diffusers' DPMSolverMultistepScheduler (DPM-Solver++ and
// SDE-DPM-Solver++, orders 1 to 3). It is not safe for concurrent use.
type DPMMultistep struct {
	dpmState
	lowerNum int
	rnd      []float32
	buf      []float32
}

func newDPMMultistep(b *base) (Scheduler, error) {
	p := b.p
	if err := checkDPMAlgorithm(p); err != nil {
		return nil, err
	}
	if p.algorithmType == "sde-dpmsolver++" && p.solverOrder == 3 {
		return nil, &ConfigError{Field: "solver_order", Reason: "3 is not supported with sde-dpmsolver++"}
	}
	s := &DPMMultistep{dpmState: dpmState{base: b}}
	s.full, s.sigmas = dpmSchedule(b)
	s.allocOuts()
	s.rnd = make([]float32, b.size)
	if p.thresholding {
		s.buf = make([]float32, b.size)
	}
	return s, nil
}

// checkDPMAlgorithm refuses the algorithm types the DPM-Solver schedulers
// do not run.
func checkDPMAlgorithm(p *params) error {
	switch p.algorithmType {
	case "dpmsolver++", "sde-dpmsolver++":
		return nil
	}
	return &ConfigError{Field: "algorithm_type", Reason: fmt.Sprintf("%q is not supported (dpmsolver++, sde-dpmsolver++)", p.algorithmType)}
}

// convertX0 writes the data prediction (x0) of the model output into dst.
func convertX0(dst, mo, sample []float32, alpha, sigma float32, p *params, buf []float32) {
	switch p.predictionType {
	case "epsilon":
		for j := range dst {
			dst[j] = (sample[j] - float32(sigma*mo[j])) / alpha
		}
	case "sample":
		copy(dst, mo)
	case "v_prediction":
		for j := range dst {
			dst[j] = float32(alpha*sample[j]) - float32(sigma*mo[j])
		}
	}
	if p.thresholding {
		thresholdSample(dst, buf, p.dynThreshRatio, p.sampleMaxValue)
	}
}

// Step implements Scheduler.
func (s *DPMMultistep) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	p := s.p
	k := s.stepStart + i
	n := len(s.full)
	lowerFinal := k == n-1 && (p.eulerAtFinal || (p.lowerOrderFinal && n < 15) || p.finalSigmasType == "zero")
	lowerSecond := k == n-2 && p.lowerOrderFinal && n < 15

	// shift history and convert the new output
	m0 := s.shift()
	a0, sg0 := alphaSigma(s.sigmas[k])
	convertX0(m0, mo, sample, a0, sg0, p, s.buf)

	sde := p.algorithmType == "sde-dpmsolver++"
	if sde {
		s.noise.Randn(s.rnd)
	}
	order := multistepOrder(p.solverOrder, s.lowerNum, lowerFinal, lowerSecond)

	alphaT, sigmaT := alphaSigma(s.sigmas[k+1])
	lamT := lambda(alphaT, sigmaT)
	lam0 := lambda(a0, sg0)
	h := lamT - lam0
	emh := exp32(-h) - 1 // exp(-h) - 1
	ratio := sigmaT / sg0
	switch order {
	case 1:
		dpmFirst(sample, sample, m0, s.rnd, ratio, alphaT, sigmaT, h, sde)
	case 2:
		m1 := s.outs[len(s.outs)-2]
		_, sg1 := alphaSigma(s.sigmas[k-1])
		a1, _ := alphaSigma(s.sigmas[k-1])
		lam1 := lambda(a1, sg1)
		h0 := lam0 - lam1
		r0 := h0 / h
		rinv := 1 / r0
		dpmSecond(sample, sample, m0, m0, m1, s.rnd, rinv, ratio, alphaT, sigmaT, h, sde, p.solverType != "midpoint")
	case 3:
		m1, m2 := s.outs[len(s.outs)-2], s.outs[len(s.outs)-3]
		a1, sg1 := alphaSigma(s.sigmas[k-1])
		a2, sg2 := alphaSigma(s.sigmas[k-2])
		lam1, lam2 := lambda(a1, sg1), lambda(a2, sg2)
		h0, h1 := lam0-lam1, lam1-lam2
		r0, r1 := h0/h, h1/h
		r0inv, r1inv := 1/r0, 1/r1
		c1 := r0 / (r0 + r1)
		c2 := 1 / (r0 + r1)
		B := alphaT * emh
		C := alphaT * (emh/h + 1)
		E := alphaT * ((emh+h)/float32(h*h) - 0.5)
		for j := range sample {
			d10 := float32(r0inv * (m0[j] - m1[j]))
			d11 := float32(r1inv * (m1[j] - m2[j]))
			d1 := d10 + float32(c1*(d10-d11))
			d2 := float32(c2 * (d10 - d11))
			x := float32(ratio*sample[j]) - float32(B*m0[j])
			x += float32(C * d1)
			sample[j] = x - float32(E*d2)
		}
	}
	if s.lowerNum < p.solverOrder {
		s.lowerNum++
	}
	return nil
}

// dpmState is what the DPM-Solver family (DPMMultistep, DPMSinglestep,
// DEIS, UniPC) shares: the sigma schedule, the history of model outputs,
// and the Scheduler methods that depend only on them.
type dpmState struct {
	*base
	sigmas []float32
	outs   [][]float32 // model outputs, oldest first; len solver_order
}

// shift rotates the output history: the oldest buffer becomes the newest
// and is returned, for the step's new output.
func (s *dpmState) shift() []float32 {
	first := s.outs[0]
	copy(s.outs, s.outs[1:])
	s.outs[len(s.outs)-1] = first
	return first
}

// multistepOrder is the order a multistep solver (DPM-Solver++, DEIS)
// runs a step at: its solver_order, lowered while the history fills
// (lowerNum outputs so far) and at the last steps.
func multistepOrder(solverOrder, lowerNum int, lowerFinal, lowerSecond bool) int {
	switch {
	case solverOrder == 1 || lowerNum < 1 || lowerFinal:
		return 1
	case solverOrder == 2 || lowerNum < 2 || lowerSecond:
		return 2
	}
	return 3
}

// dpmFirst is DPM-Solver++'s first-order update from the sample x (at the
// sigma of the data prediction d) to dst, ratio = σ_t/σ_s and h = λ_t − λ_s;
// the SDE variant adds the step's noise rnd. dst may be x.
func dpmFirst(dst, x, d, rnd []float32, ratio, alphaT, sigmaT, h float32, sde bool) {
	if sde {
		e2 := exp32(float32(-2.0 * h))
		A := float32(ratio * exp32(-h))
		B := alphaT * (1 - e2)
		E := sigmaT * sqrt32(1-e2)
		for j := range dst {
			v := float32(A*x[j]) + float32(B*d[j])
			dst[j] = v + float32(E*rnd[j])
		}
		return
	}
	B := alphaT * (exp32(-h) - 1)
	for j := range dst {
		dst[j] = float32(ratio*x[j]) - float32(B*d[j])
	}
}

// dpmSecond is DPM-Solver++'s second-order update from the sample x to
// dst: the first-order step on the data prediction d plus the correction
// of the difference D1 = rinv·(m0 − m1), midpoint (heun false) or heun;
// the SDE variant adds the step's noise rnd. The multistep solver passes
// d = m0, the singlestep solver d = m1 (its block's first evaluation).
// dst may be x.
func dpmSecond(dst, x, d, m0, m1, rnd []float32, rinv, ratio, alphaT, sigmaT, h float32, sde, heun bool) {
	if sde {
		e2 := exp32(float32(-2.0 * h))
		A := float32(ratio * exp32(-h))
		B := alphaT * (1 - e2)
		C := float32(0.5 * B)
		if heun {
			C = alphaT * ((1-e2)/float32(-2.0*h) + 1)
		}
		E := sigmaT * sqrt32(1-e2)
		for j := range dst {
			d1 := float32(rinv * (m0[j] - m1[j]))
			v := float32(A*x[j]) + float32(B*d[j])
			v += float32(C * d1)
			dst[j] = v + float32(E*rnd[j])
		}
		return
	}
	emh := exp32(-h) - 1
	B := alphaT * emh
	if heun {
		C := alphaT * (emh/h + 1)
		for j := range dst {
			d1 := float32(rinv * (m0[j] - m1[j]))
			v := float32(ratio*x[j]) - float32(B*d[j])
			dst[j] = v + float32(C*d1)
		}
		return
	}
	C := float32(0.5 * B)
	for j := range dst {
		d1 := float32(rinv * (m0[j] - m1[j]))
		v := float32(ratio*x[j]) - float32(B*d[j])
		dst[j] = v - float32(C*d1)
	}
}

// allocOuts allocates the output history.
func (s *dpmState) allocOuts() {
	s.outs = make([][]float32, s.p.solverOrder)
	for i := range s.outs {
		s.outs[i] = make([]float32, s.size)
	}
}

// Sigmas returns the sigma of each step followed by the final sigma. The
// caller must not modify the slice.
func (s *dpmState) Sigmas() []float32 { return s.sigmas }

// InitNoiseSigma implements Scheduler.
func (s *dpmState) InitNoiseSigma() float64 { return 1 }

// ScaleModelInput implements Scheduler; the DPM-Solver family does not scale.
func (s *dpmState) ScaleModelInput(dst, sample []float32, i int) { copyScale(dst, sample) }

// AddNoise implements Scheduler.
func (s *dpmState) AddNoise(dst, original, noise []float32) {
	a, sg := alphaSigma(s.sigmas[s.noiseIdx])
	for j := range dst {
		dst[j] = float32(a*original[j]) + float32(sg*noise[j])
	}
}
