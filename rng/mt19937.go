package rng

// mtN and mtM are the MT19937 state size and shift offset.
const (
	mtN = 624
	mtM = 397
)

// mt19937 is the 32-bit Mersenne Twister of Matsumoto and Nishimura, as
// implemented by numpy's legacy RandomState and by torch's at::mt19937. It is
// not safe for concurrent use.
type mt19937 struct {
	state [mtN]uint32
	pos   int
}

// seed initializes the state with init_genrand(s): numpy's mt19937_seed and
// torch's mt19937 constructor (which truncates its 64-bit seed to 32 bits).
func (m *mt19937) seed(s uint32) {
	m.state[0] = s
	for i := uint32(1); i < mtN; i++ {
		prev := m.state[i-1]
		m.state[i] = 1812433253*(prev^(prev>>30)) + i
	}
	m.pos = mtN
}

// twist regenerates the whole state block.
func (m *mt19937) twist() {
	const (
		upper   = 0x80000000
		lower   = 0x7fffffff
		matrixA = 0x9908b0df
	)
	s := &m.state
	mix := func(cur, nxt, far uint32) uint32 {
		y := cur&upper | nxt&lower
		v := far ^ y>>1
		if y&1 != 0 {
			v ^= matrixA
		}
		return v
	}
	i := 0
	for ; i < mtN-mtM; i++ {
		s[i] = mix(s[i], s[i+1], s[i+mtM])
	}
	for ; i < mtN-1; i++ {
		s[i] = mix(s[i], s[i+1], s[i+mtM-mtN])
	}
	s[mtN-1] = mix(s[mtN-1], s[0], s[mtM-1])
	m.pos = 0
}

// next returns the next tempered 32-bit output.
func (m *mt19937) next() uint32 {
	if m.pos >= mtN {
		m.twist()
	}
	y := m.state[m.pos]
	m.pos++
	y ^= y >> 11
	y ^= y << 7 & 0x9d2c5680
	y ^= y << 15 & 0xefc60000
	y ^= y >> 18
	return y
}
