package scheduler

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
	m0 := s.shift()
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
		dpmFirst(sample, x, m0, s.rnd, sigmaT/sg0, alphaT, sigmaT, lamT-lambda(a0, sg0), sde)
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
	dpmSecond(sample, x, m1, m0, m1, s.rnd, rinv, sigmaT/sg1, alphaT, sigmaT, h, sde, p.solverType == "heun")
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
