package rng

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"testing"
)

func TestParseKind(t *testing.T) {
	tests := []struct {
		in      string
		want    Kind
		wantErr bool
	}{
		{"numpy", KindNumpy, false},
		{"torch", KindTorchCPU, false},
		{"torch-cpu", KindTorchCPU, false},
		{"", 0, true},
		{"Numpy", 0, true},
		{"torch-cuda", 0, true},
		{"pcg64", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseKind(tt.in)
		if tt.wantErr {
			if !errors.Is(err, ErrUnknownKind) {
				t.Errorf("ParseKind(%q) error = %v, want %v", tt.in, err, ErrUnknownKind)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseKind(%q) = %v, %v; want %v, nil", tt.in, got, err, tt.want)
		}
		// The canonical name parses back to the same kind.
		if back, err := ParseKind(got.String()); err != nil || back != got {
			t.Errorf("ParseKind(%q.String() = %q) = %v, %v", tt.in, got.String(), back, err)
		}
	}
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		kind    Kind
		seed    uint64
		wantErr error
	}{
		{"numpy zero", KindNumpy, 0, nil},
		{"numpy max", KindNumpy, math.MaxUint32, nil},
		{"numpy 2^32", KindNumpy, 1 << 32, ErrSeedRange},
		{"numpy max uint64", KindNumpy, math.MaxUint64, ErrSeedRange},
		{"torch zero", KindTorchCPU, 0, nil},
		{"torch max uint64", KindTorchCPU, math.MaxUint64, nil},
		{"zero kind", 0, 1, ErrUnknownKind},
		{"bad kind", Kind(99), 1, ErrUnknownKind},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src, err := New(tt.kind, tt.seed)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || src != nil {
					t.Fatalf("New(%v, %d) = %v, %v; want nil, %v", tt.kind, tt.seed, src, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%v, %d): %v", tt.kind, tt.seed, err)
			}
			// New builds the same stream as the concrete constructor.
			var want Source
			if tt.kind == KindNumpy {
				want = NewNumpy(uint32(tt.seed))
			} else {
				want = NewTorch(tt.seed)
			}
			a, b := make([]float32, 37), make([]float32, 37)
			src.Randn(a)
			want.Randn(b)
			for i := range a {
				if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
					t.Fatalf("value %d: New gives %v, constructor %v", i, a[i], b[i])
				}
			}
		})
	}
}

// TestMT19937 checks the engine against the published MT19937 values: the
// first output of init_genrand(5489) and the 10000th, which the C++ standard
// requires of std::mt19937.
func TestMT19937(t *testing.T) {
	var m mt19937
	m.seed(5489)
	if got := m.next(); got != 3499211612 {
		t.Errorf("first output = %d, want 3499211612", got)
	}
	var v uint32
	for range 9999 {
		v = m.next()
	}
	if v != 4123659995 {
		t.Errorf("10000th output = %d, want 4123659995", v)
	}
}

// TestSplitCalls checks against the shared reference that consecutive Randn
// calls continue the stream: numpy keeps its cached gauss value across calls,
// so any split of randn(n) gives the same values; torch's vectorized path
// draws exactly n uniforms for n a multiple of 16, so splits at multiples of
// 16 do (a final part whose length is not a multiple of 16 redraws its own
// last 16 values, as one randn(n) does).
func TestSplitCalls(t *testing.T) {
	for _, c := range loadReference(t) {
		for _, k := range []struct {
			kind   Kind
			want   *refStream
			splits [][]int
		}{
			{KindNumpy, c.Numpy, [][]int{{1, 2, 3, 5, 7, 11}, {2, 1}, {9, 16, 1}}},
			{KindTorchCPU, c.TorchCPU, [][]int{{16, 32, 16}, {48}}},
		} {
			if k.want == nil || k.want.All == nil {
				continue
			}
			n := len(k.want.All)
			for _, split := range k.splits {
				t.Run(fmt.Sprintf("%v/seed=%d/n=%d/split=%v", k.kind, c.Seed, n, split), func(t *testing.T) {
					g, err := New(k.kind, c.Seed)
					if err != nil {
						t.Fatal(err)
					}
					got := make([]float32, n)
					rest := got
					for _, s := range split {
						if s > len(rest) {
							s = len(rest)
						}
						g.Randn(rest[:s])
						rest = rest[s:]
					}
					g.Randn(rest)
					compareStream(t, got, k.want)
				})
			}
		}
	}
}

func TestRandnEmpty(t *testing.T) {
	for _, g := range []Source{NewNumpy(7), NewTorch(7)} {
		g.Randn(nil) // must not panic nor advance the stream
		a := make([]float32, 20)
		g.Randn(a)
		var fresh Source = NewNumpy(7)
		if _, ok := g.(*Torch); ok {
			fresh = NewTorch(7)
		}
		b := make([]float32, 20)
		fresh.Randn(b)
		for i := range a {
			if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
				t.Fatalf("%T: Randn(nil) changed the stream at %d", g, i)
			}
		}
	}
}

// TestRandnMoments is a sanity check on the distribution: mean ~ 0 and
// variance ~ 1 over 2^16 values, within 5 standard errors.
func TestRandnMoments(t *testing.T) {
	const n = 1 << 16
	for _, g := range []Source{NewNumpy(3), NewTorch(3)} {
		v := make([]float32, n)
		g.Randn(v)
		var sum, sq float64
		for _, x := range v {
			sum += float64(x)
			sq += float64(x) * float64(x)
		}
		mean := sum / n
		variance := sq/n - mean*mean
		if math.Abs(mean) > 5/math.Sqrt(n) || math.Abs(variance-1) > 5*math.Sqrt(2.0/n) {
			t.Errorf("%T: mean %v, variance %v", g, mean, variance)
		}
	}
}

func TestRandnAllocs(t *testing.T) {
	for _, n := range []int{1, 15, 16, 105, 4 * 64 * 64} {
		dst := make([]float32, n)
		for _, g := range []Source{NewNumpy(1), NewTorch(1)} {
			if a := testing.AllocsPerRun(20, func() { g.Randn(dst) }); a != 0 {
				t.Errorf("%T.Randn(%d values): %v allocations per run, want 0", g, n, a)
			}
		}
	}
}

// TestFMA32 checks fma32 against exact big.Float arithmetic rounded once to
// float32, on random operands and on sums that cancel or sit near halfway
// points.
func TestFMA32(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	exact := func(a, b, c float32) float32 {
		x := new(big.Float).SetPrec(0).SetFloat64(float64(a))
		x.SetPrec(200).Mul(x, new(big.Float).SetFloat64(float64(b)))
		x.Add(x, new(big.Float).SetFloat64(float64(c)))
		f, _ := x.Float32()
		return f
	}
	randf := func() float32 {
		return float32(r.NormFloat64()) * float32(math.Ldexp(1, r.IntN(20)-10))
	}
	for i := range 200000 {
		a, b := randf(), randf()
		var c float32
		switch i % 3 {
		case 0:
			c = randf()
		case 1: // near cancellation
			c = -mul32(a, b)
		default: // c tiny next to a*b: the product's low bits decide rounding
			c = mul32(a, b) * float32(math.Ldexp(1, -25-r.IntN(4)))
		}
		got, want := fma32(a, b, c), exact(a, b, c)
		if math.Float32bits(got) != math.Float32bits(want) && !(got == 0 && want == 0) {
			t.Fatalf("fma32(%v, %v, %v) = %v, want %v", a, b, c, got, want)
		}
	}
}

// TestCephes checks the emulated avx_mathfun.h functions against float64
// math on the domains torch uses: log256 on (0, 1] and sincos256 on
// [0, 2π). Cephes float32 accuracy is a few ulp; the bounds are explicit.
func TestCephes(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		u := float32(r.Uint32()&(1<<24-1)) * (1.0 / (1 << 24))
		x := 1 - u // (0, 1]
		want := math.Log(float64(x))
		if got := float64(log256(x)); math.Abs(got-want) > 4e-7*math.Max(1, math.Abs(want)) {
			t.Fatalf("log256(%v) = %v, want %v", x, got, want)
		}
		th := mul32(twoPi32, u)
		s, c := sincos256(th)
		if ws, wc := math.Sin(float64(th)), math.Cos(float64(th)); math.Abs(float64(s)-ws) > 2e-7 || math.Abs(float64(c)-wc) > 2e-7 {
			t.Fatalf("sincos256(%v) = %v, %v; want %v, %v", th, s, c, ws, wc)
		}
	}
	if got := log256(1); got != 0 {
		t.Errorf("log256(1) = %v, want 0", got)
	}
	if got := log256(0); !math.IsNaN(float64(got)) {
		t.Errorf("log256(0) = %v, want NaN", got)
	}
}

func BenchmarkRandn(b *testing.B) {
	for _, kind := range []Kind{KindNumpy, KindTorchCPU} {
		b.Run(fmt.Sprintf("%v/4x64x64", kind), func(b *testing.B) {
			g, err := New(kind, 42)
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]float32, 4*64*64)
			b.ReportAllocs()
			b.SetBytes(int64(4 * len(dst)))
			for b.Loop() {
				g.Randn(dst)
			}
		})
	}
}
