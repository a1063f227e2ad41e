package rng

import "math"

// torchFillMin is the smallest numel for which torch's CPU normal kernel takes
// the vectorized normal_fill path for a contiguous float32 tensor.
const torchFillMin = 16

// Torch reproduces torch.randn(n, generator=torch.Generator("cpu").manual_seed(seed))
// in float32 as torch 1.13 computes it on x86-64 CPUs with AVX2, the CPU
// capability its kernels dispatch to there (also on AVX-512 machines). torch
// forced to its portable kernels (ATEN_CPU_CAPABILITY=default, or a CPU
// without AVX2) computes the n >= 16 path with libm instead and differs in
// the last bits; that variant is not reproduced.
//
// For n >= 16 torch fills the tensor with 24-bit uniform floats, then turns
// each block of 16 into normals with Box–Muller over the pairs (j, j+8) in
// single precision (normal_fill_16_AVX2); when n is not a multiple of 16 the
// last 16 values are drawn again and transformed as one more block. For
// n < 16 torch instead draws each value from normal_distribution<double>,
// which caches the second Box–Muller value in the generator; that cache
// survives across calls until the next manual_seed, as it does here.
//
// A Torch is not safe for concurrent use.
type Torch struct {
	mt         mt19937
	nextNormal float64 // next_double_normal_sample, valid when hasNext
	hasNext    bool
}

// NewTorch returns a generator in the state of
// torch.Generator("cpu").manual_seed(seed). Like torch's mt19937, it keeps only
// the low 32 bits of seed.
func NewTorch(seed uint64) *Torch {
	g := new(Torch)
	g.mt.seed(uint32(seed))
	return g
}

// Randn fills dst with the values of one torch.randn(len(dst)) call,
// continuing the generator's stream. It allocates nothing.
func (g *Torch) Randn(dst []float32) {
	n := len(dst)
	if n < torchFillMin {
		for i := range dst {
			dst[i] = float32(g.normalDouble())
		}
		return
	}
	for i := range dst {
		dst[i] = g.uniformFloat()
	}
	for i := 0; i+16 <= n; i += 16 {
		normalFill16((*[16]float32)(dst[i : i+16]))
	}
	if n%16 != 0 {
		tail := (*[16]float32)(dst[n-16:])
		for i := range tail {
			tail[i] = g.uniformFloat()
		}
		normalFill16(tail)
	}
}

// uniformFloat is at::uniform_real_distribution<float>(0, 1): the low 24 bits
// of one 32-bit draw, scaled by 2^-24.
func (g *Torch) uniformFloat() float32 {
	return float32(g.mt.next()&(1<<24-1)) * (1.0 / (1 << 24))
}

// uniformDouble is at::uniform_real_distribution<double>(0, 1): the low 53
// bits of random64() (first draw high, second low), scaled by 2^-53.
func (g *Torch) uniformDouble() float64 {
	hi := uint64(g.mt.next())
	lo := uint64(g.mt.next())
	return float64((hi<<32|lo)&(1<<53-1)) * (1.0 / (1 << 53))
}

// normalDouble is at::normal_distribution<double>(0, 1) with the generator's
// cached second value.
func (g *Torch) normalDouble() float64 {
	const mean, std = 0.0, 1.0
	if g.hasNext {
		g.hasNext = false
		return float64(g.nextNormal*std) + mean
	}
	u1 := g.uniformDouble()
	u2 := g.uniformDouble()
	r := math.Sqrt(float64(-2.0 * math.Log(1.0-u2)))
	theta := float64(2.0*math.Pi) * u1
	g.nextNormal = float64(r * math.Sin(theta))
	g.hasNext = true
	return float64(float64(r*math.Cos(theta))*std) + mean
}

// twoPi32 is _mm256_set1_ps(2.0f * c10::pi<double>): 2π rounded to float.
const twoPi32 = float32(2 * math.Pi)

// normalFill16 is torch's normal_fill_16_AVX2 with mean 0 and std 1: it turns
// 16 uniforms in [0, 1) into 16 standard normals in place.
func normalFill16(d *[16]float32) {
	for j := range 8 {
		u1 := 1 - d[j] // [0, 1) -> (0, 1] for the log
		u2 := d[j+8]
		radius := sqrt32(mul32(-2, log256(u1)))
		sin, cos := sincos256(mul32(twoPi32, u2))
		d[j] = fma32(mul32(radius, cos), 1, 0) // _mm256_fmadd_ps(n1, std, mean)
		d[j+8] = fma32(mul32(radius, sin), 1, 0)
	}
}
