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

	m0 := s.shift()
	a0, sg0 := alphaSigma(s.sigmas[k])
	convertX0(s.x0, mo, sample, a0, sg0, p, s.buf)
	for j := range m0 {
		m0[j] = (sample[j] - float32(a0*s.x0[j])) / sg0
	}

	order := multistepOrder(p.solverOrder, s.lowerNum, lowerFinal, lowerSecond)
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
