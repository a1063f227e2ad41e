package rng

import "math"

// Numpy reproduces np.random.RandomState(seed).randn(...).astype(np.float32):
// MT19937 seeded by numpy's legacy mt19937_seed, 53-bit doubles built from
// two 32-bit draws, and the polar Box–Muller method of numpy's legacy_gauss,
// which returns one value per call and caches the second one. The cache lives
// in the generator, so consecutive Randn calls continue the stream exactly as
// consecutive randn calls on one RandomState do.
//
// A Numpy is not safe for concurrent use.
type Numpy struct {
	mt       mt19937
	gauss    float64
	hasGauss bool
}

// NewNumpy returns a generator in the state of np.random.RandomState(seed).
func NewNumpy(seed uint32) *Numpy {
	g := new(Numpy)
	g.mt.seed(seed)
	return g
}

// Randn fills dst with the values of one randn(len(dst)) call converted to
// float32, continuing the generator's stream. It allocates nothing.
func (g *Numpy) Randn(dst []float32) {
	for i := range dst {
		dst[i] = float32(g.gaussian())
	}
}

// double returns numpy's legacy_double: a uniform float64 in [0, 1) with 53
// random bits.
func (g *Numpy) double() float64 {
	a := g.mt.next() >> 5
	b := g.mt.next() >> 6
	return (float64(a)*67108864.0 + float64(b)) / 9007199254740992.0
}

// gaussian returns numpy's legacy_gauss.
func (g *Numpy) gaussian() float64 {
	if g.hasGauss {
		v := g.gauss
		g.hasGauss = false
		g.gauss = 0
		return v
	}
	var x1, x2, r2 float64
	for {
		// Explicit float64 conversions keep each product rounded, as in C,
		// on architectures where Go would otherwise fuse multiply-adds.
		x1 = float64(2.0*g.double()) - 1.0
		x2 = float64(2.0*g.double()) - 1.0
		r2 = float64(x1*x1) + float64(x2*x2)
		if r2 < 1.0 && r2 != 0.0 {
			break
		}
	}
	f := math.Sqrt(float64(-2.0*math.Log(r2)) / r2)
	g.gauss = f * x1
	g.hasGauss = true
	return f * x2
}
