package scheduler

import (
	"math"
)

// Float32 helpers mirroring torch float32 scalar math.
func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }
func log32(x float32) float32  { return float32(math.Log(float64(x))) }
func exp32(x float32) float32  { return float32(math.Exp(float64(x))) }

// torchLinspace32 reproduces torch.linspace(start, end, n, dtype=float32) on
// CPU as torch 1.13's AVX2 kernel computes it: the vectorized loop fills two
// 8-lane vectors per iteration, each as arange(base, step) with base =
// fma(step, idx, start) (or fma(-step, n-idx-1, end) past halfway; the
// compiler contracts these to FMA) and lane k = base + k*step; the tail uses
// the scalar formula. This matches diffusers' betas bit for bit.
func torchLinspace32(start, end float32, n int) []float32 {
	out := make([]float32, n)
	if n == 1 {
		out[0] = start
		return out
	}
	step := (end - start) / float32(n-1)
	halfway := n / 2
	at := func(idx int) float32 {
		if idx < halfway {
			return fma32(step, float32(idx), start)
		}
		return fma32(-step, float32(n-idx-1), end)
	}
	const lanes = 8
	idx := 0
	for ; idx+2*lanes <= n; idx += 2 * lanes {
		for v := idx; v < idx+2*lanes; v += lanes {
			base := at(v)
			for k := range lanes {
				out[v+k] = base + float32(float32(k)*step)
			}
		}
	}
	for ; idx < n; idx++ {
		out[idx] = at(idx)
	}
	return out
}

// fma32 is a*b+c with one rounding (the product of two float32 is exact in
// float64).
func fma32(a, b, c float32) float32 {
	return float32(math.FMA(float64(a), float64(b), float64(c)))
}

// trainSchedule holds the float32 training noise schedule.
type trainSchedule struct {
	betas          []float32
	alphasCumprod  []float32
	finalAlphaProd float32 // alphas_cumprod[0] or 1 (set_alpha_to_one)
}

// alphaProds returns the alphas_cumprod of timestep t and of the previous
// timestep prevT (the final alpha product when prevT is before the
// schedule), as DDIM's, PNDM's and LCM's steps read them.
func (ts trainSchedule) alphaProds(t, prevT int) (a, aPrev float32) {
	a, aPrev = ts.alphasCumprod[t], ts.finalAlphaProd
	if prevT >= 0 {
		aPrev = ts.alphasCumprod[prevT]
	}
	return a, aPrev
}

// newTrainSchedule computes betas and alphas_cumprod as diffusers does, in
// torch float32 arithmetic (cumprod accumulates in double on CPU).
func newTrainSchedule(p *params) trainSchedule {
	n := p.numTrainTimesteps
	var betas []float32
	switch {
	case p.trainedBetas != nil:
		betas = make([]float32, n)
		for i, b := range p.trainedBetas {
			betas[i] = float32(b)
		}
	case p.betaSchedule == "linear":
		betas = torchLinspace32(float32(p.betaStart), float32(p.betaEnd), n)
	case p.betaSchedule == "scaled_linear":
		betas = torchLinspace32(float32(math.Sqrt(p.betaStart)), float32(math.Sqrt(p.betaEnd)), n)
		for i, b := range betas {
			betas[i] = b * b
		}
	case p.betaSchedule == "squaredcos_cap_v2":
		alphaBar := func(t float64) float64 {
			c := math.Cos((t + 0.008) / 1.008 * math.Pi / 2)
			return c * c
		}
		betas = make([]float32, n)
		for i := range n {
			t1 := float64(i) / float64(n)
			t2 := float64(i+1) / float64(n)
			betas[i] = float32(math.Min(1-alphaBar(t2)/alphaBar(t1), 0.999))
		}
	}
	if p.rescaleZeroSNR {
		betas = rescaleZeroTerminalSNR(betas)
	}
	ac := cumprod(betas)
	if p.rescaleZeroSNR && isSigmaClass(p.class) {
		ac[n-1] = float32(math.Ldexp(1, -24))
	}
	final := ac[0]
	if p.setAlphaToOne {
		final = 1
	}
	return trainSchedule{betas: betas, alphasCumprod: ac, finalAlphaProd: final}
}

// cumprod returns cumprod(1 - betas) with a double accumulator rounded to
// float32 at each element, as torch.cumprod does on CPU.
func cumprod(betas []float32) []float32 {
	ac := make([]float32, len(betas))
	acc := 1.0
	for i, b := range betas {
		acc *= float64(1 - b)
		ac[i] = float32(acc)
	}
	return ac
}

// rescaleZeroTerminalSNR is diffusers' rescale_zero_terminal_snr in float32.
func rescaleZeroTerminalSNR(betas []float32) []float32 {
	n := len(betas)
	ac := cumprod(betas)
	s := make([]float32, n)
	for i, a := range ac {
		s[i] = sqrt32(a)
	}
	s0, sT := s[0], s[n-1]
	scale := s0 / (s0 - sT)
	for i := range s {
		s[i] -= sT
		s[i] *= scale
	}
	bar := make([]float32, n)
	for i := range s {
		bar[i] = s[i] * s[i]
	}
	out := make([]float32, n)
	out[0] = 1 - bar[0]
	for i := 1; i < n; i++ {
		out[i] = 1 - bar[i]/bar[i-1]
	}
	return out
}

// isSigmaClass reports whether class replaces the zero terminal
// alphas_cumprod by 2**-24 (to keep its sigmas finite) under
// rescale_betas_zero_snr.
func isSigmaClass(class string) bool {
	switch class {
	case "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
		"DPMSolverMultistepScheduler", "UniPCMultistepScheduler":
		return true
	}
	return false
}

// trainSigmas returns ((1-ac)/ac)**0.5 in float32, the Karras-style sigmas of
// every training timestep.
func (ts trainSchedule) trainSigmas() []float32 {
	s := make([]float32, len(ts.alphasCumprod))
	for i, a := range ts.alphasCumprod {
		s[i] = sqrt32((1 - a) / a)
	}
	return s
}

// npInterp is numpy.interp(x, arange(len(fp)), fp) in float64.
func npInterp(x float64, fp []float32) float64 {
	n := len(fp)
	if x <= 0 {
		return float64(fp[0])
	}
	if x >= float64(n-1) {
		return float64(fp[n-1])
	}
	j := int(math.Floor(x))
	lo, hi := float64(fp[j]), float64(fp[j+1])
	slope := (hi - lo) / (float64(j+1) - float64(j))
	r := slope*(x-float64(j)) + lo
	return r
}

// npRound is numpy.round (half to even).
func npRound(x float64) float64 { return math.RoundToEven(x) }

// npLinspace is numpy.linspace(start, stop, num) in float64.
func npLinspace(start, stop float64, num int) []float64 {
	out := make([]float64, num)
	if num == 1 {
		out[0] = start
		return out
	}
	div := float64(num - 1)
	delta := stop - start
	step := delta / div
	for i := range num {
		out[i] = float64(i)*step + start
	}
	out[num-1] = stop
	return out
}

// karras converts sigmas to the Karras et al. (2022) schedule over n steps,
// from inSigmas[0] (max) down to inSigmas[last] (min), unless the config
// gives sigma_min/sigma_max.
func karras(p *params, sigmaMax, sigmaMin float64, n int) []float64 {
	if !math.IsNaN(p.sigmaMin) {
		sigmaMin = p.sigmaMin
	}
	if !math.IsNaN(p.sigmaMax) {
		sigmaMax = p.sigmaMax
	}
	const rho = 7.0
	ramp := npLinspace(0, 1, n)
	minInv := math.Pow(sigmaMin, 1/rho)
	maxInv := math.Pow(sigmaMax, 1/rho)
	out := make([]float64, n)
	for i, r := range ramp {
		out[i] = math.Pow(maxInv+r*(minInv-maxInv), rho)
	}
	return out
}

// sigmaToT is diffusers' _sigma_to_t: the fractional training timestep of
// sigma by linear interpolation in log-sigma space. logSigmas is np.log of
// the float32 training sigmas. Under numpy 1.24's value-based casting the
// float64 scalar log(sigma) meets float32 arrays, so the distances and the
// weight are float32; only the final blend of the indices is float64.
func sigmaToT(sigma float64, logSigmas []float32) float64 {
	ls := float32(math.Log(math.Max(sigma, 1e-10)))
	low, w := sigmaLow(ls, logSigmas)
	return float64(1-w)*float64(low) + float64(w)*float64(low+1)
}

// sigmaLow returns _sigma_to_t's index low (argmax(cumsum(dists >= 0)):
// the last index whose log sigma is at most ls, 0 when there is none,
// clipped to n-2) and its float32 weight towards low+1, clipped to [0, 1].
func sigmaLow(ls float32, logSigmas []float32) (int, float32) {
	low := 0
	for i, l := range logSigmas {
		if ls-l >= 0 {
			low = i
		}
	}
	low = min(low, len(logSigmas)-2)
	lo, hi := logSigmas[low], logSigmas[low+1]
	w := (lo - ls) / (lo - hi)
	return low, max(0, min(1, w))
}

// spacedTimesteps returns the float64 timesteps for the sigma-based
// schedulers (Euler, LMS, Heun, ...), from high to low, following
// timestep_spacing as diffusers' set_timesteps does.
func spacedTimesteps(p *params, n int) []float64 {
	N := p.numTrainTimesteps
	ts := make([]float64, n)
	switch p.timestepSpacing {
	case "linspace":
		ls := npLinspace(0, float64(N-1), n)
		for i := range n {
			ts[i] = ls[n-1-i]
		}
	case "leading":
		ratio := N / n
		for i := range n {
			ts[i] = npRound(float64((n-1-i)*ratio)) + float64(p.stepsOffset)
		}
	case "trailing":
		ts = ts[:0]
		for _, x := range npArange(float64(N), 0, -float64(N)/float64(n)) {
			ts = append(ts, npRound(x)-1)
		}
	}
	return ts
}

// npLogF32 is numpy's np.log on a float32 array (the AVX2/AVX512F
// simd_log_FLOAT kernel of numpy 1.24): range reduction to a mantissa in
// (sqrt(1/2), sqrt(2)], then exponent*ln2 + P(x)/Q(x) with degree-5
// minimax polynomials evaluated with FMA. It is not correctly rounded (up to
// 3.83 ulp); reproducing it makes _sigma_to_t bit-exact.
func npLogF32(v float32) float32 {
	switch {
	case v != v:
		return v
	case v < 0:
		return float32(math.NaN())
	case v == 0:
		return float32(math.Inf(-1))
	case math.IsInf(float64(v), 1):
		return v
	}
	var p = [6]float32{0, 9.999999999999998702752e-01, 2.112677543073053063722e+00,
		1.480000633576506585156e+00, 3.808837741388407920751e-01, 2.589979117907922693523e-02}
	var q = [6]float32{1, 2.612677543073109236779e+00, 2.453006071784736363091e+00,
		9.864942958519418960339e-01, 1.546476374983906719538e-01, 5.875095403124574342950e-03}
	const loge2 = float32(0.693147180559945309417232121458176568)
	const sqrt12 = float32(0.707106781186547524400844362104849039)
	x := v
	var expAdj float32
	if x < math.SmallestNonzeroFloat32*(1<<23) { // below FLT_MIN: scale by 2^100
		x *= float32(math.Ldexp(1, 100))
		expAdj = 100
	}
	bits := math.Float32bits(x)
	e := float32(int32(bits>>23)-0x7E) - expAdj
	m := math.Float32frombits(bits&0x7fffff | 126<<23)
	if m <= sqrt12 {
		m += m
		e--
	}
	m--
	num := fma32(p[5], m, p[4])
	num = fma32(num, m, p[3])
	num = fma32(num, m, p[2])
	num = fma32(num, m, p[1])
	num = fma32(num, m, p[0])
	den := fma32(q[5], m, q[4])
	den = fma32(den, m, q[3])
	den = fma32(den, m, q[2])
	den = fma32(den, m, q[1])
	den = fma32(den, m, q[0])
	return fma32(e, loge2, num/den)
}

// npArange is numpy.arange(start, stop, step) for float64 arguments: the
// length is ceil((stop-start)/step) and, as numpy's DOUBLE_fill does, the
// elements after the second are start + i*((start+step)-start).
func npArange(start, stop, step float64) []float64 {
	n := int(math.Ceil((stop - start) / step))
	if n <= 0 {
		return nil
	}
	out := make([]float64, n)
	out[0] = start
	if n > 1 {
		out[1] = start + step
		d := out[1] - out[0]
		for i := 2; i < n; i++ {
			out[i] = start + float64(i)*d
		}
	}
	return out
}
