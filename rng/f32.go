package rng

import "math"

// This file emulates, one lane at a time, the single-precision AVX2 code that
// torch's CPU normal_fill_16_AVX2 runs: avx_mathfun.h's log256_ps and
// sincos256_ps (Cephes polynomials by Julien Pommier and Giovanni
// Garberoglio), compiled by GCC with -mfma and its default -ffp-contract=fast,
// which fuses every multiply whose only use is an add or subtract into an
// FMA. Each helper rounds exactly once, to float32; explicit conversions stop
// the Go compiler from fusing operations on its own.

// fma32 returns a*b+c rounded once to float32 (vfmadd…ps).
func fma32(a, b, c float32) float32 {
	// a*b is exact in float64. Round the sum to odd in float64, then to
	// float32: with 53 >= 24+2 bits, rounding to odd first makes the second
	// rounding correct.
	p := float64(float64(a) * float64(b))
	q := float64(c)
	s := float64(p + q)
	bp := float64(s - p)
	err := float64(p-float64(s-bp)) + float64(q-bp)
	if err != 0 {
		bits := math.Float64bits(s)
		if bits&1 == 0 {
			if (err > 0) == (s > 0) {
				bits++
			} else {
				bits--
			}
			s = math.Float64frombits(bits)
		}
	}
	return float32(s)
}

// mul32 returns a*b rounded to float32.
func mul32(a, b float32) float32 { return float32(a * b) }

// sqrt32 returns the correctly rounded float32 square root (vsqrtps).
func sqrt32(x float32) float32 { return float32(math.Sqrt(float64(x))) }

// avx_mathfun.h constants: C double literals rounded to float.
const (
	cephesSQRTHF = float32(0.707106781186547524)
	logP0        = float32(7.0376836292e-2)
	logP1        = float32(-1.1514610310e-1)
	logP2        = float32(1.1676998740e-1)
	logP3        = float32(-1.2420140846e-1)
	logP4        = float32(+1.4249322787e-1)
	logP5        = float32(-1.6668057665e-1)
	logP6        = float32(+2.0000714765e-1)
	logP7        = float32(-2.4999993993e-1)
	logP8        = float32(+3.3333331174e-1)
	logQ1        = float32(-2.12194440e-4)
	logQ2        = float32(0.693359375)

	minusDP1 = float32(-0.78515625)
	minusDP2 = float32(-2.4187564849853515625e-4)
	minusDP3 = float32(-3.77489497744594108e-8)
	sinP0    = float32(-1.9515295891e-4)
	sinP1    = float32(8.3321608736e-3)
	sinP2    = float32(-1.6666654611e-1)
	cosP0    = float32(2.443315711809948e-005)
	cosP1    = float32(-1.388731625493765e-003)
	cosP2    = float32(4.166664568298827e-002)
	fourOPi  = float32(1.27323954473516)

	minNormPos = 0x00800000 // bits of the smallest normal float32
	expMask    = 0x7f800000
	signMask   = 0x80000000
)

// log256 is one lane of avx_mathfun.h's log256_ps as compiled with FMA
// contraction. It returns NaN for x <= 0.
func log256(x float32) float32 {
	if x <= 0 || x != x {
		return float32(math.NaN())
	}
	if math.Float32bits(x) < minNormPos { // _mm256_max_ps: flush denormals up
		x = math.Float32frombits(minNormPos)
	}
	bits := math.Float32bits(x)
	e := float32(int32(bits>>23) - 0x7f)
	x = math.Float32frombits(bits&^expMask | math.Float32bits(0.5))
	e += 1

	var tmp float32 // x & mask: x where x < SQRTHF, +0 elsewhere
	if x < cephesSQRTHF {
		tmp = x
		e -= 1
	}
	x -= 1
	x += tmp

	z := mul32(x, x)
	y := fma32(logP0, x, logP1)
	y = fma32(y, x, logP2)
	y = fma32(y, x, logP3)
	y = fma32(y, x, logP4)
	y = fma32(y, x, logP5)
	y = fma32(y, x, logP6)
	y = fma32(y, x, logP7)
	y = fma32(y, x, logP8)
	y = mul32(y, x)
	y = fma32(y, z, mul32(e, logQ1)) // y*z + e*q1: the first multiply fuses
	y = fma32(-z, 0.5, y)            // y - z*0.5
	x += y
	return fma32(e, logQ2, x) // x + e*q2
}

// sincos256 is one lane of avx_mathfun.h's sincos256_ps as compiled with FMA
// contraction. It is accurate for |x| < 8192.
func sincos256(x float32) (sin, cos float32) {
	xb := math.Float32bits(x)
	signSin := xb & signMask
	x = math.Float32frombits(xb &^ signMask)

	j := int32(mul32(x, fourOPi)) // vcvttps2dq truncates
	j = (j + 1) &^ 1
	y := float32(j)
	swapSin := uint32(j&4) << 29
	polyMask := j&2 == 0 // use the sine polynomial for the sine
	signCos := uint32(^(j-2)&4) << 29
	signSin ^= swapSin

	// Extended precision modular arithmetic, one FMA per term.
	x = fma32(y, minusDP1, x)
	x = fma32(y, minusDP2, x)
	x = fma32(y, minusDP3, x)

	z := mul32(x, x)
	yc := fma32(cosP0, z, cosP1)
	yc = fma32(yc, z, cosP2)
	yc = mul32(yc, z)
	yc = fma32(yc, z, -mul32(z, 0.5)) // y*z - z*0.5
	yc += 1

	ys := fma32(sinP0, z, sinP1)
	ys = fma32(ys, z, sinP2)
	ys = mul32(ys, z)
	ys = fma32(ys, x, x)

	// The selection is done with masks and adds of +0, as in the C code.
	var ysin1, ysin2 float32
	if polyMask {
		ysin2 = ys
	} else {
		ysin1 = yc
	}
	ys -= ysin2
	yc -= ysin1
	s := ysin1 + ysin2
	c := yc + ys
	return math.Float32frombits(math.Float32bits(s) ^ signSin),
		math.Float32frombits(math.Float32bits(c) ^ signCos)
}
