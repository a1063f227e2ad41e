package scheduler

// DEIS is diffusers' DEISMultistepScheduler (diffusion exponential
// integrator sampler, "logrho" solver, orders 1 to 3). It is not safe for
// concurrent use.
type DEIS struct {
	dpmState
	lowerNum int
	x0       []float32
	buf      []float32
}

func newDEIS(b *base) (Scheduler, error) {
	s := &DEIS{dpmState: dpmState{base: b}}
	s.full, s.sigmas = dpmSchedule(b)
	s.allocOuts()
	s.x0 = make([]float32, b.size)
	if b.p.thresholding {
		s.buf = make([]float32, b.size)
	}
	return s, nil
}

// npLog is np.log applied to a float32 torch scalar (numpy's float32 kernel).
func npLog(x float32) float32 { return npLogF32(x) }

// deisInd2 is the second-order DEIS ind_fn(t, b, c).
func deisInd2(t, b, c float32) float32 {
	num := float32(t * ((-npLog(c) + npLog(t)) - 1))
	return num / (npLog(b) - npLog(c))
}

// deisInd3 is the third-order DEIS ind_fn(t, b, c, d).
func deisInd3(t, b, c, d float32) float32 {
	lc, ld, lt, lb := npLog(c), npLog(d), npLog(t), npLog(b)
	v := float32(lc * ((ld - lt) + 1))
	v -= float32(ld * lt)
	v += ld
	v += float32(lt * lt)
	v -= float32(2 * lt)
	v += 2
	num := float32(t * v)
	den := float32((lb - lc) * (lb - ld))
	return num / den
}

// Step implements Scheduler.
func (s *DEIS) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	p := s.p
	k := s.stepStart + i
	n := len(s.full)
	lowerFinal := k == n-1 && p.lowerOrderFinal && n < 15
	lowerSecond := k == n-2 && p.lowerOrderFinal && n < 15

	first := s.outs[0]
	copy(s.outs, s.outs[1:])
	s.outs[len(s.outs)-1] = first
	m0 := first
	a0, sg0 := alphaSigma(s.sigmas[k])
	convertX0(s.x0, mo, sample, a0, sg0, p, s.buf)
	for j := range m0 {
		m0[j] = (sample[j] - float32(a0*s.x0[j])) / sg0
	}

	order := 3
	switch {
	case p.solverOrder == 1 || s.lowerNum < 1 || lowerFinal:
		order = 1
	case p.solverOrder == 2 || s.lowerNum < 2 || lowerSecond:
		order = 2
	}
	alphaT, sigmaT := alphaSigma(s.sigmas[k+1])
	switch order {
	case 1:
		h := lambda(alphaT, sigmaT) - lambda(a0, sg0)
		c1 := alphaT / a0
		c2 := sigmaT * (exp32(h) - 1)
		for j := range sample {
			sample[j] = float32(c1*sample[j]) - float32(c2*m0[j])
		}
	case 2:
		m1 := s.outs[len(s.outs)-2]
		a1, sg1 := alphaSigma(s.sigmas[k-1])
		rt, r0, r1 := sigmaT/alphaT, sg0/a0, sg1/a1
		coef1 := deisInd2(rt, r0, r1) - deisInd2(r0, r0, r1)
		coef2 := deisInd2(rt, r1, r0) - deisInd2(r0, r1, r0)
		for j := range sample {
			v := sample[j]/a0 + float32(coef1*m0[j])
			v += float32(coef2 * m1[j])
			sample[j] = alphaT * v
		}
	case 3:
		m1, m2 := s.outs[len(s.outs)-2], s.outs[len(s.outs)-3]
		a1, sg1 := alphaSigma(s.sigmas[k-1])
		a2, sg2 := alphaSigma(s.sigmas[k-2])
		rt, r0, r1, r2 := sigmaT/alphaT, sg0/a0, sg1/a1, sg2/a2
		coef1 := deisInd3(rt, r0, r1, r2) - deisInd3(r0, r0, r1, r2)
		coef2 := deisInd3(rt, r1, r2, r0) - deisInd3(r0, r1, r2, r0)
		coef3 := deisInd3(rt, r2, r0, r1) - deisInd3(r0, r2, r0, r1)
		for j := range sample {
			v := sample[j]/a0 + float32(coef1*m0[j])
			v += float32(coef2 * m1[j])
			v += float32(coef3 * m2[j])
			sample[j] = alphaT * v
		}
	}
	if s.lowerNum < p.solverOrder {
		s.lowerNum++
	}
	return nil
}

// DPMSinglestep is diffusers' DPMSolverSinglestepScheduler (DPM-Solver++
// orders 1 to 3 and SDE-DPM-Solver++ orders 1 and 2, singlestep). It is
// not safe for concurrent use.
type DPMSinglestep struct {
	dpmState
	orders []int
	nouts  int
	saved  []float32 // self.sample: the sample at the last order-1 step
	rnd    []float32
	buf    []float32
}

func newDPMSinglestep(b *base) (Scheduler, error) {
	p := b.p
	if err := checkDPMAlgorithm(p); err != nil {
		return nil, err
	}
	if p.solverOrder == 3 && p.algorithmType == "sde-dpmsolver++" {
		// diffusers' third-order singlestep update has no SDE form
		return nil, &ConfigError{Field: "solver_order", Reason: "3 is not supported with sde-dpmsolver++ by DPMSolverSinglestepScheduler"}
	}
	s := &DPMSinglestep{dpmState: dpmState{base: b}}
	// timesteps = linspace(0, N-1, n+1).round()[::-1][:-1]
	ls := npLinspace(0, float64(p.numTrainTimesteps-1), b.n+1)
	var ts []float64
	for i := b.n; i >= 1; i-- {
		ts = append(ts, npRound(ls[i]))
	}
	s.full, s.sigmas = dpmSigmas(b, ts)
	// get_order_list (lower_order_final is forced on with final_sigmas_type
	// zero, or steps that are no multiple of the order)
	n := b.n
	s.orders = singlestepOrders(p.solverOrder, n, p.lowerOrderFinal || n%p.solverOrder != 0 || p.finalSigmasType == "zero")
	if p.finalSigmasType == "zero" {
		s.orders[len(s.orders)-1] = 1
	}
	s.allocOuts()
	s.saved = make([]float32, b.size)
	s.rnd = make([]float32, b.size)
	if p.thresholding {
		s.buf = make([]float32, b.size)
	}
	return s, nil
}

// singlestepOrders is DPMSolverSinglestepScheduler.get_order_list: the
// solver order of each of n steps.
func singlestepOrders(order, n int, lowerOrderFinal bool) []int {
	var orders []int
	repeat := func(k int) {
		for range k {
			for o := 1; o <= order; o++ {
				orders = append(orders, o)
			}
		}
	}
	switch {
	case order == 1:
		repeat(n)
	case !lowerOrderFinal:
		repeat(n / order)
	case order == 2 && n%2 == 0:
		repeat(n/2 - 1)
		orders = append(orders, 1, 1)
	case order == 2:
		repeat(n / 2)
		orders = append(orders, 1)
	case n%3 == 0:
		repeat(n/3 - 1)
		orders = append(orders, 1, 2, 1)
	case n%3 == 1:
		repeat(n / 3)
		orders = append(orders, 1)
	default:
		repeat(n / 3)
		orders = append(orders, 1, 2)
	}
	return orders
}

// Step implements Scheduler.
func (s *DPMSinglestep) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	p := s.p
	k := s.stepStart + i
	first := s.outs[0]
	copy(s.outs, s.outs[1:])
	s.outs[len(s.outs)-1] = first
	m0 := first
	a0, sg0 := alphaSigma(s.sigmas[k])
	convertX0(m0, mo, sample, a0, sg0, p, s.buf)
	s.nouts = min(s.nouts+1, len(s.outs))
	sde := p.algorithmType == "sde-dpmsolver++"
	if sde {
		s.noise.Randn(s.rnd)
	}
	order := min(s.orders[k], s.nouts)
	if order == 1 {
		copy(s.saved, sample)
	}
	x := s.saved
	alphaT, sigmaT := alphaSigma(s.sigmas[k+1])
	lamT := lambda(alphaT, sigmaT)
	if order == 1 {
		h := lamT - lambda(a0, sg0)
		ratio := sigmaT / sg0
		if sde {
			e2 := exp32(float32(-2.0 * h))
			A := float32(ratio * exp32(-h))
			B := alphaT * (1 - e2)
			E := sigmaT * sqrt32(1-e2)
			for j := range sample {
				v := float32(A*x[j]) + float32(B*m0[j])
				sample[j] = v + float32(E*s.rnd[j])
			}
		} else {
			B := alphaT * (exp32(-h) - 1)
			for j := range sample {
				sample[j] = float32(ratio*x[j]) - float32(B*m0[j])
			}
		}
		return nil
	}
	if order == 3 {
		s.thirdOrder(sample, x, k, alphaT, sigmaT, lamT)
		return nil
	}
	m1 := s.outs[len(s.outs)-2]
	a1, sg1 := alphaSigma(s.sigmas[k-1])
	lam0, lam1 := lambda(a0, sg0), lambda(a1, sg1)
	h, h0 := lamT-lam1, lam0-lam1
	r0 := h0 / h
	rinv := 1 / r0
	ratio := sigmaT / sg1
	if sde {
		e2 := exp32(float32(-2.0 * h))
		A := float32(ratio * exp32(-h))
		B := alphaT * (1 - e2)
		C := float32(0.5 * B)
		if p.solverType == "heun" {
			C = alphaT * ((1-e2)/float32(-2.0*h) + 1)
		}
		E := sigmaT * sqrt32(1-e2)
		for j := range sample {
			d1 := float32(rinv * (m0[j] - m1[j]))
			v := float32(A*x[j]) + float32(B*m1[j])
			v += float32(C * d1)
			sample[j] = v + float32(E*s.rnd[j])
		}
		return nil
	}
	emh := exp32(-h) - 1
	B := alphaT * emh
	if p.solverType == "heun" {
		C := alphaT * (emh/h + 1)
		for j := range sample {
			d1 := float32(rinv * (m0[j] - m1[j]))
			v := float32(ratio*x[j]) - float32(B*m1[j])
			sample[j] = v + float32(C*d1)
		}
		return nil
	}
	C := float32(0.5 * B)
	for j := range sample {
		d1 := float32(rinv * (m0[j] - m1[j]))
		v := float32(ratio*x[j]) - float32(B*m1[j])
		sample[j] = v - float32(C*d1)
	}
	return nil
}

// thirdOrder is singlestep_dpm_solver_third_order_update for
// DPM-Solver++: from the sample x at the block's first evaluation (k−2)
// with the data predictions of evaluations k−2, k−1 and k, in float32 as
// diffusers' tensors.
func (s *DPMSinglestep) thirdOrder(sample, x []float32, k int, alphaT, sigmaT, lamT float32) {
	n := len(s.outs)
	m0, m1, m2 := s.outs[n-1], s.outs[n-2], s.outs[n-3]
	a0, sg0 := alphaSigma(s.sigmas[k])
	a1, sg1 := alphaSigma(s.sigmas[k-1])
	a2, sg2 := alphaSigma(s.sigmas[k-2])
	lam0, lam1, lam2 := lambda(a0, sg0), lambda(a1, sg1), lambda(a2, sg2)
	h, h0, h1 := lamT-lam2, lam0-lam2, lam1-lam2
	r0, r1 := h0/h, h1/h
	inv0, inv1 := 1/r0, 1/r1
	ratio := sigmaT / sg2
	emh := exp32(-h) - 1
	B := alphaT * emh
	C := alphaT * (emh/h + 1)
	if s.p.solverType != "heun" { // midpoint
		for j := range sample {
			d11 := float32(inv0 * (m0[j] - m2[j]))
			v := float32(ratio*x[j]) - float32(B*m2[j])
			sample[j] = v + float32(C*d11)
		}
		return
	}
	E := alphaT * ((emh+h)/(h*h) - 0.5)
	for j := range sample {
		d10, d11 := float32(inv1*(m1[j]-m2[j])), float32(inv0*(m0[j]-m2[j]))
		d1 := (float32(r0*d10) - float32(r1*d11)) / (r0 - r1)
		d2 := float32(2*(d11-d10)) / (r0 - r1)
		v := float32(ratio*x[j]) - float32(B*m2[j])
		v += float32(C * d1)
		sample[j] = v - float32(E*d2)
	}
}
