package scheduler

import (
	"math"
)

func expm1f32(x float32) float32 { return float32(math.Expm1(float64(x))) }

func abs32(x float32) float32 { return float32(math.Abs(float64(x))) }

// UniPC is diffusers' UniPCMultistepScheduler (unified predictor-corrector,
// B(h) variants bh1/bh2, data prediction, orders 1 to 3). It is not safe
// for concurrent use.
type UniPC struct {
	dpmState
	lowerNum  int
	thisOrder int
	hasLast   bool
	last      []float32 // last_sample
	corrected []float32
	spare     []float32 // receives the next converted output
	buf       []float32
	disabled  map[int]bool
	// per-order coefficient scratch (no allocation in Step)
	rks  [3]float32
	bvec [3]float32
	rmat [9]float32
}

func newUniPC(b *base) (Scheduler, error) {
	s := &UniPC{dpmState: dpmState{base: b}}
	s.full, s.sigmas = dpmSchedule(b)
	s.allocOuts()
	s.last = make([]float32, b.size)
	s.corrected = make([]float32, b.size)
	s.spare = make([]float32, b.size)
	if b.p.thresholding {
		s.buf = make([]float32, b.size)
	}
	s.disabled = map[int]bool{}
	for _, d := range b.p.disableCorrector {
		s.disabled[d] = true
	}
	return s, nil
}

// coefficients computes rks (with the trailing 1), R (rows rks^(i-1)) and b
// for the UniPC update of the given order, with h between lambda_s0 and
// lambda_t; sIdx(i) is the sigma index of the i-th older output.
func (s *UniPC) coefficients(order int, h float32, lam0 float32, sIdx func(i int) int) (hPhi1, bh float32) {
	for i := 1; i < order; i++ {
		a, sg := alphaSigma(s.sigmas[sIdx(i)])
		s.rks[i-1] = (lambda(a, sg) - lam0) / h
	}
	s.rks[order-1] = 1
	hh := -h
	hPhi1 = expm1f32(hh)
	hPhiK := hPhi1/hh - 1
	fact := 1
	bh = hh
	if s.p.solverType == "bh2" {
		bh = expm1f32(hh)
	}
	for i := 1; i <= order; i++ {
		for k := range order {
			s.rmat[(i-1)*order+k] = float32(math.Pow(float64(s.rks[k]), float64(i-1)))
		}
		s.bvec[i-1] = float32(hPhiK*float32(fact)) / bh
		fact *= i + 1
		hPhiK = hPhiK/hh - float32(1/float64(fact))
	}
	return hPhi1, bh
}

// Step implements Scheduler.
func (s *UniPC) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	p := s.p
	k := s.stepStart + i
	useCorrector := k > 0 && !s.disabled[k-1] && s.hasLast

	// convert_model_output (data prediction) into the scratch slot that
	// becomes the newest history entry.
	conv := s.spare
	a0, sg0 := alphaSigma(s.sigmas[k])
	convertX0(conv, mo, sample, a0, sg0, p, s.buf)

	x := sample
	if useCorrector {
		s.correct(conv, k)
		x = s.corrected
	}
	s.spare = s.outs[0]
	copy(s.outs, s.outs[1:])
	s.outs[len(s.outs)-1] = conv

	order := p.solverOrder
	if p.lowerOrderFinal {
		order = min(order, len(s.full)-k)
	}
	s.thisOrder = min(order, s.lowerNum+1)
	copy(s.last, x)
	s.hasLast = true
	s.predict(sample, s.last, k, s.thisOrder)
	if s.lowerNum < p.solverOrder {
		s.lowerNum++
	}
	return nil
}

// predict is multistep_uni_p_bh_update, writing into dst from x.
func (s *UniPC) predict(dst, x []float32, k, order int) {
	m0 := s.outs[len(s.outs)-1]
	alphaT, sigmaT := alphaSigma(s.sigmas[k+1])
	aS0, sS0 := alphaSigma(s.sigmas[k])
	lamT, lam0 := lambda(alphaT, sigmaT), lambda(aS0, sS0)
	h := lamT - lam0
	hPhi1, bh := s.coefficients(order, h, lam0, func(i int) int { return k - i })
	c1 := sigmaT / sS0
	c2 := alphaT * hPhi1
	c3 := alphaT * bh
	switch order {
	case 1:
		for j := range dst {
			dst[j] = float32(c1*x[j]) - float32(c2*m0[j])
		}
	case 2:
		m1 := s.outs[len(s.outs)-2]
		rk := s.rks[0]
		const rho = float32(0.5)
		for j := range dst {
			d1 := (m1[j] - m0[j]) / rk
			v := float32(c1*x[j]) - float32(c2*m0[j])
			dst[j] = v - float32(c3*float32(rho*d1))
		}
	default:
		m1, m2 := s.outs[len(s.outs)-2], s.outs[len(s.outs)-3]
		// rhos_p = solve(R[:-1, :-1], b[:-1])
		sub := [4]float32{s.rmat[0], s.rmat[1], s.rmat[3], s.rmat[4]}
		rho := solve2(sub, [2]float32{s.bvec[0], s.bvec[1]})
		r0, r1 := s.rks[0], s.rks[1]
		for j := range dst {
			d1 := (m1[j] - m0[j]) / r0
			d2 := (m2[j] - m0[j]) / r1
			res := float32(rho[0]*d1) + float32(rho[1]*d2)
			v := float32(c1*x[j]) - float32(c2*m0[j])
			dst[j] = v - float32(c3*res)
		}
	}
}

// solve2 solves a 2×2 system without allocating.
func solve2(a [4]float32, b [2]float32) [2]float32 {
	if abs32(a[2]) > abs32(a[0]) {
		a[0], a[1], a[2], a[3] = a[2], a[3], a[0], a[1]
		b[0], b[1] = b[1], b[0]
	}
	l := a[2] * (1 / a[0])
	u11 := a[3] - float32(l*a[1])
	y1 := b[1] - float32(l*b[0])
	x1 := y1 / u11
	x0 := (b[0] - float32(a[1]*x1)) / a[0]
	return [2]float32{x0, x1}
}

// correct is multistep_uni_c_bh_update with the previous order, writing the
// corrected sample into s.corrected. modelT is the converted output at the
// current sample (the current latents).
func (s *UniPC) correct(modelT []float32, k int) {
	order := s.thisOrder
	m0 := s.outs[len(s.outs)-1]
	x := s.last
	xt := s.corrected
	alphaT, sigmaT := alphaSigma(s.sigmas[k])
	aS0, sS0 := alphaSigma(s.sigmas[k-1])
	lamT, lam0 := lambda(alphaT, sigmaT), lambda(aS0, sS0)
	h := lamT - lam0
	hPhi1, bh := s.coefficients(order, h, lam0, func(i int) int { return k - (i + 1) })
	c1 := sigmaT / sS0
	c2 := alphaT * hPhi1
	c3 := alphaT * bh
	switch order {
	case 1:
		const rho = float32(0.5)
		for j := range xt {
			v := float32(c1*x[j]) - float32(c2*m0[j])
			d1t := modelT[j] - m0[j]
			xt[j] = v - float32(c3*float32(rho*d1t))
		}
	case 2:
		m1 := s.outs[len(s.outs)-2]
		rho := solve2([4]float32{s.rmat[0], s.rmat[1], s.rmat[2], s.rmat[3]}, [2]float32{s.bvec[0], s.bvec[1]})
		rk := s.rks[0]
		for j := range xt {
			d1 := (m1[j] - m0[j]) / rk
			corr := float32(rho[0] * d1)
			v := float32(c1*x[j]) - float32(c2*m0[j])
			d1t := modelT[j] - m0[j]
			xt[j] = v - float32(c3*(corr+float32(rho[1]*d1t)))
		}
	default:
		m1, m2 := s.outs[len(s.outs)-2], s.outs[len(s.outs)-3]
		rho := solve3(s.rmat, s.bvec)
		r0, r1 := s.rks[0], s.rks[1]
		for j := range xt {
			d1 := (m1[j] - m0[j]) / r0
			d2 := (m2[j] - m0[j]) / r1
			corr := float32(rho[0]*d1) + float32(rho[1]*d2)
			v := float32(c1*x[j]) - float32(c2*m0[j])
			d1t := modelT[j] - m0[j]
			xt[j] = v - float32(c3*(corr+float32(rho[2]*d1t)))
		}
	}
}

// solve3 solves a 3×3 system without allocating.
func solve3(a [9]float32, b [3]float32) [3]float32 {
	const n = 3
	x := b
	for c := range n {
		p := c
		for r := c + 1; r < n; r++ {
			if abs32(a[r*n+c]) > abs32(a[p*n+c]) {
				p = r
			}
		}
		if p != c {
			for k := range n {
				a[c*n+k], a[p*n+k] = a[p*n+k], a[c*n+k]
			}
			x[c], x[p] = x[p], x[c]
		}
		inv := 1 / a[c*n+c]
		for r := c + 1; r < n; r++ {
			l := a[r*n+c] * inv
			a[r*n+c] = l
			for k := c + 1; k < n; k++ {
				a[r*n+k] -= float32(l * a[c*n+k])
			}
		}
	}
	for r := range n {
		for k := range r {
			x[r] -= float32(a[r*n+k] * x[k])
		}
	}
	for r := n - 1; r >= 0; r-- {
		for k := r + 1; k < n; k++ {
			x[r] -= float32(a[r*n+k] * x[k])
		}
		x[r] /= a[r*n+r]
	}
	return x
}
