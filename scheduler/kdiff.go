package scheduler

import (
	"math"
)

// gk21 holds the 21-point Gauss-Kronrod nodes and weights of QUADPACK's
// qk21 (the first pass of scipy.integrate.quad).
var gk21x = [11]float64{
	0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
	0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
	0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
	0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
	0.294392862701460198131126603103866, 0.148874338981631210884826001129720, 0,
}

var gk21w = [11]float64{
	0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
	0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
	0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
	0.123491976262065851077208980209765, 0.134709217311473325928054001771707,
	0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
	0.149445554002916905664936468389821,
}

// gk21 integrates f over [a, b] with the 21-point Kronrod rule, which is
// exact for the polynomials of LMS.
func gk21(f func(float64) float64, a, b float64) float64 {
	c := 0.5 * (a + b)
	h := 0.5 * (b - a)
	sum := gk21w[10] * f(c)
	for j := range 10 {
		d := h * gk21x[j]
		sum += gk21w[j] * (f(c-d) + f(c+d))
	}
	return sum * h
}

// LMS is diffusers' LMSDiscreteScheduler (linear multistep, order 4). It is
// not safe for concurrent use.
type LMS struct {
	sigmaBase
	coeffs [][]float32  // per step index: the coefficients, newest first
	derivs [4][]float32 // derivatives, oldest first
	nder   int
	x0     []float32
	acc    []float32
}

const lmsOrder = 4

func newLMS(b *base) (Scheduler, error) {
	ts, sig, logSig := kdiffSchedule(b, true)
	s := &LMS{sigmaBase: sigmaBase{base: b, logSigmas: logSig}}
	s.sigmas = appendFinal(b, sig)
	s.full = ts
	// get_lms_coefficient: the integrand is evaluated with float32 tensors.
	s.coeffs = make([][]float32, len(ts))
	for k := range ts {
		order := min(k+1, lmsOrder)
		cs := make([]float32, order)
		for cur := range order {
			f := func(tau float64) float64 {
				prod := float32(1)
				for j := range order {
					if j == cur {
						continue
					}
					prod *= (float32(tau) - s.sigmas[k-j]) / (s.sigmas[k-cur] - s.sigmas[k-j])
				}
				return float64(prod)
			}
			cs[cur] = float32(gk21(f, float64(s.sigmas[k]), float64(s.sigmas[k+1])))
		}
		s.coeffs[k] = cs
	}
	for i := range s.derivs {
		s.derivs[i] = make([]float32, b.size)
	}
	s.x0 = make([]float32, b.size)
	s.acc = make([]float32, b.size)
	return s, nil
}

// Step implements Scheduler.
func (s *LMS) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	sigma := s.sigmas[k]
	predX0(s.x0, mo, sample, sigma, s.p.predictionType)
	if s.nder == lmsOrder {
		first := s.derivs[0]
		copy(s.derivs[:], s.derivs[1:])
		s.derivs[lmsOrder-1] = first
		s.nder--
	}
	d := s.derivs[s.nder]
	s.nder++
	for j := range d {
		d[j] = (sample[j] - s.x0[j]) / sigma
	}
	cs := s.coeffs[k]
	n := min(len(cs), s.nder)
	acc := s.acc
	for j := range acc {
		acc[j] = 0
	}
	for c := range n {
		coef := cs[c]
		dv := s.derivs[s.nder-1-c]
		for j := range acc {
			acc[j] += float32(coef * dv[j])
		}
	}
	for j := range sample {
		sample[j] += acc[j]
	}
	return nil
}

// interleave returns [x[0], x[1], x[1], ..., x[n-2], x[n-2], x[n-1]] for
// repeatMid, as torch.cat([x[:1], x[1:-1].repeat_interleave(2), x[-1:]]).
func interleaveMid(x []float32) []float32 {
	out := []float32{x[0]}
	for _, v := range x[1 : len(x)-1] {
		out = append(out, v, v)
	}
	return append(out, x[len(x)-1])
}

// twoStage is the sigmaBase of a scheduler of two model evaluations per
// step but the last (Heun, DPMSDE): each sigma but the first and the final
// is evaluated twice, and the timesteps are ts[0], then mid(i) and ts[i+1]
// for each later step i; its order is 2.
func twoStage(b *base, ts, sig []float64, logSig []float32, mid func(i int) float64) sigmaBase {
	s := sigmaBase{base: b, logSigmas: logSig}
	s.sigmas = interleaveMid(appendFinal(b, sig))
	full := []float64{ts[0]}
	for i, t := range ts[1:] {
		full = append(full, mid(i), t)
	}
	s.full = full
	s.order = 2
	return s
}

// stageSigmas returns the interval of a two-stage step at evaluation k:
// from sigmas[k] to sigmas[k+1] at its first evaluation, and at its second
// (whose sigma stands once more in sigmas) from sigmas[k-1] to sigmas[k].
func (s *sigmaBase) stageSigmas(k int, first bool) (sigma, next float32) {
	if first {
		return s.sigmas[k], s.sigmas[k+1]
	}
	return s.sigmas[k-1], s.sigmas[k]
}

// Heun is diffusers' HeunDiscreteScheduler (Heun's second-order method: two
// model evaluations per step except the last). It is not safe for
// concurrent use.
type Heun struct {
	sigmaBase
	first   bool // state_in_first_order
	dt      float32
	prevDer []float32
	saved   []float32
	x0      []float32
}

func newHeun(b *base) (Scheduler, error) {
	ts, sig, logSig := kdiffSchedule(b, true)
	s := &Heun{sigmaBase: twoStage(b, ts, sig, logSig, func(i int) float64 { return ts[i+1] }), first: true}
	s.prevDer = make([]float32, b.size)
	s.saved = make([]float32, b.size)
	s.x0 = make([]float32, b.size)
	return s, nil
}

// Step implements Scheduler.
func (s *Heun) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	sigma, next := s.stageSigmas(k, s.first)
	input := sigma
	if !s.first {
		input = next
	}
	predX0(s.x0, mo, sample, input, s.p.predictionType)
	if s.p.clipSample {
		clampAll(s.x0, float32(s.p.clipSampleRange))
	}
	if s.first {
		dt := next - sigma
		for j := range sample {
			d := (sample[j] - s.x0[j]) / sigma
			s.prevDer[j] = d
			s.saved[j] = sample[j]
			sample[j] += float32(d * dt)
		}
		s.dt = dt
		s.first = false
		return nil
	}
	dt := s.dt
	for j := range sample {
		d := (sample[j] - s.x0[j]) / next
		d = (s.prevDer[j] + d) / 2
		sample[j] = s.saved[j] + float32(d*dt)
	}
	s.first = true
	return nil
}

// sigmaToT32 is _sigma_to_t called with torch tensors (as KDPM2 does for
// its interpolated sigmas): every operation is float32.
func sigmaToT32(sigma float32, logSigmas []float32) float32 {
	low, w := sigmaLow(npLogF32(max(sigma, float32(1e-10))), logSigmas)
	return float32((1-w)*float32(low)) + float32(w*float32(low+1))
}

// torchLerpHalf is torch.lerp(a, b, 0.5) in float32.
func torchLerpHalf(a, b float32) float32 { return b - float32((b-a)*0.5) }

// KDPM2 is diffusers' KDPM2DiscreteScheduler (DPM-Solver-2 from
// k-diffusion); KDPM2Ancestral adds ancestral noise. They are not safe for
// concurrent use.
type KDPM2 struct {
	sigmaBase
	ancestral bool
	interpol  []float32 // sigmas_interpol, interleaved like sigmas
	up, down  []float32 // ancestral only
	first     bool
	saved     []float32
	x0        []float32
	rnd       []float32
}

func newKDPM2(b *base) (Scheduler, error)          { return newKDPM2Common(b, false) }
func newKDPM2Ancestral(b *base) (Scheduler, error) { return newKDPM2Common(b, true) }

func newKDPM2Common(b *base, ancestral bool) (Scheduler, error) {
	if b.p.predictionType == "sample" {
		return nil, &ConfigError{Field: "prediction_type", Reason: "sample is not supported by " + b.p.class}
	}
	ts, sig, logSig := kdiffSchedule(b, true)
	if b.p.useKarras {
		for i := range ts {
			ts[i] = npRound(ts[i])
		}
	}
	s := &KDPM2{sigmaBase: sigmaBase{base: b, logSigmas: logSig}, ancestral: ancestral, first: true}
	sigmas := make([]float32, 0, len(sig)+1)
	for _, v := range sig {
		sigmas = append(sigmas, float32(v))
	}
	sigmas = append(sigmas, 0)
	n := len(sigmas)
	interp := make([]float32, n)
	var tsInterp []float32
	if !ancestral {
		// sigmas.log().lerp(sigmas.roll(1).log(), 0.5).exp()
		for i := range sigmas {
			prev := sigmas[(i+n-1)%n]
			interp[i] = exp32(torchLerpHalf(logOrInf(sigmas[i]), logOrInf(prev)))
		}
		for _, v := range interp[1 : n-1] {
			tsInterp = append(tsInterp, sigmaToT32(v, logSig))
		}
	} else {
		up := make([]float32, n)
		down := make([]float32, n)
		for i := range sigmas {
			var next float32
			if i+1 < n {
				next = sigmas[i+1]
			}
			sg := sigmas[i]
			u := sqrt32(float32(float32(next*next)*(float32(sg*sg)-float32(next*next))) / float32(sg*sg))
			up[i] = u
			down[i] = sqrt32(float32(next*next) - float32(u*u))
		}
		down[n-1] = 0
		for i := range sigmas {
			interp[i] = exp32(torchLerpHalf(logOrInf(sigmas[i]), logOrInf(down[i])))
		}
		interp[n-1], interp[n-2] = 0, 0
		for _, v := range interp[:n-2] {
			tsInterp = append(tsInterp, sigmaToT32(v, logSig))
		}
		s.up = interleaveAll(up)
		s.down = interleaveAll(down)
	}
	s.sigmas = interleaveAll(sigmas)
	s.interpol = interleaveAll(interp)
	full := []float64{ts[0]}
	for i, t := range ts[1:] {
		full = append(full, float64(tsInterp[i]), float64(float32(t)))
	}
	s.full = full
	s.order = 2
	s.saved = make([]float32, b.size)
	s.x0 = make([]float32, b.size)
	s.rnd = make([]float32, b.size)
	return s, nil
}

func logOrInf(x float32) float32 {
	if x == 0 {
		return float32(math.Inf(-1))
	}
	return log32(x)
}

// interleaveAll is torch.cat([x[:1], x[1:].repeat_interleave(2)]) for
// KDPM2, with the last element repeated once more for the ancestral variant
// (both are long enough for every index the step uses).
func interleaveAll(x []float32) []float32 {
	out := []float32{x[0]}
	for _, v := range x[1:] {
		out = append(out, v, v)
	}
	return append(out, x[len(x)-1])
}

// ScaleModelInput implements Scheduler.
func (s *KDPM2) ScaleModelInput(dst, sample []float32, i int) {
	k := s.stepStart + i
	sigma := s.sigmas[k]
	if !s.first {
		sigma = s.interpol[k]
		if s.ancestral {
			sigma = s.interpol[k-1]
		}
	}
	scaleBySigma(dst, sample, sigma)
}

// Step implements Scheduler.
func (s *KDPM2) Step(mo, sample []float32, i int) error {
	if err := s.checkStep(mo, sample, i); err != nil {
		return err
	}
	k := s.stepStart + i
	if s.ancestral {
		return s.stepAncestral(mo, sample, k)
	}
	var sigma, interp, next float32
	if s.first {
		sigma, interp, next = s.sigmas[k], s.interpol[k+1], s.sigmas[k+1]
	} else {
		sigma, interp, next = s.sigmas[k-1], s.interpol[k], s.sigmas[k]
	}
	if s.evaluate(mo, sample, sigma, interp) {
		return nil
	}
	dt := next - sigma
	for j := range sample {
		d := (sample[j] - s.x0[j]) / interp
		sample[j] = s.saved[j] + float32(d*dt)
	}
	s.first = true
	return nil
}

// evaluate predicts x0 at the evaluation's input sigma: sigma at the
// first evaluation of a step, the interpolated sigma at the second. At the
// first it takes the Euler step from sigma to interp, keeping the sample
// for the second, and reports true: the call's work is done.
func (s *KDPM2) evaluate(mo, sample []float32, sigma, interp float32) (first bool) {
	if !s.first {
		predX0(s.x0, mo, sample, interp, s.p.predictionType)
		return false
	}
	predX0(s.x0, mo, sample, sigma, s.p.predictionType)
	dt := interp - sigma
	for j := range sample {
		d := (sample[j] - s.x0[j]) / sigma
		s.saved[j] = sample[j]
		sample[j] += float32(d * dt)
	}
	s.first = false
	return true
}

func (s *KDPM2) stepAncestral(mo, sample []float32, k int) error {
	var sigma, interp, up, down float32
	if s.first {
		sigma, interp, up = s.sigmas[k], s.interpol[k], s.up[k]
		down = s.down[max(k-1, 0)]
	} else {
		sigma, interp, up, down = s.sigmas[k-1], s.interpol[k-1], s.up[k-1], s.down[k-1]
	}
	if s.evaluate(mo, sample, sigma, interp) {
		return nil
	}
	s.noise.Randn(s.rnd)
	dt := down - sigma
	for j := range sample {
		d := (sample[j] - s.x0[j]) / interp
		x := s.saved[j] + float32(d*dt)
		sample[j] = x + float32(s.rnd[j]*up)
	}
	s.first = true
	return nil
}
