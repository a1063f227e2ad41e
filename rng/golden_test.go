package rng

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// refStream is one generator's expected output in rng/randn.json.
type refStream struct {
	SHA256  string    `json:"sha256"`
	First16 []float64 `json:"first16"`
	Last4   []float64 `json:"last4"`
	All     []float64 `json:"all"`
}

// refCase is one seed and shape in rng/randn.json.
type refCase struct {
	Seed     uint64     `json:"seed"`
	Shape    []int      `json:"shape"`
	Numpy    *refStream `json:"numpy"`
	TorchCPU *refStream `json:"torch_cpu"`
}

// loadReference reads ../shared/reference/rng/randn.json, skipping the test
// when it is absent.
func loadReference(t testing.TB) []refCase {
	t.Helper()
	path := shareddir.File(t, "reference/rng/randn.json")
	var ref struct {
		Cases []refCase `json:"cases"`
	}
	shareddir.ReadJSON(t, path, &ref)
	if len(ref.Cases) == 0 {
		t.Fatalf("%s: no cases", path)
	}
	return ref.Cases
}

// sum256 returns the hex sha256 of v as little-endian float32 bytes.
func sum256(v []float32) string {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// compareStream checks got against want bit for bit: the listed values
// (exact float32 bits, i.e. tolerance 0) and the sha256 of the whole output.
func compareStream(t *testing.T, got []float32, want *refStream) {
	t.Helper()
	check := func(what string, off int, vals []float64) {
		t.Helper()
		bad := 0
		for i, w := range vals {
			g, w := got[off+i], float32(w)
			if math.Float32bits(g) != math.Float32bits(w) {
				if bad < 5 {
					t.Errorf("%s[%d] (index %d) = %v (%#08x), want %v (%#08x)",
						what, i, off+i, g, math.Float32bits(g), w, math.Float32bits(w))
				}
				bad++
			}
		}
		if bad > 0 {
			t.Errorf("%s: %d of %d values differ", what, bad, len(vals))
		}
	}
	check("first16", 0, want.First16)
	check("last4", len(got)-len(want.Last4), want.Last4)
	if want.All != nil {
		if len(want.All) != len(got) {
			t.Fatalf("all: %d values, want %d", len(got), len(want.All))
		}
		check("all", 0, want.All)
	}
	if s := sum256(got); s != want.SHA256 {
		t.Errorf("sha256 = %s, want %s", s, want.SHA256)
	}
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

func TestGolden(t *testing.T) {
	for _, c := range loadReference(t) {
		n := numel(c.Shape)
		for _, k := range []struct {
			kind Kind
			want *refStream
		}{{KindNumpy, c.Numpy}, {KindTorchCPU, c.TorchCPU}} {
			t.Run(fmt.Sprintf("%v/seed=%d/shape=%v", k.kind, c.Seed, c.Shape), func(t *testing.T) {
				if k.want == nil {
					t.Skip("no reference for this kind")
				}
				g, err := New(k.kind, c.Seed)
				if err != nil {
					t.Fatal(err)
				}
				got := make([]float32, n)
				g.Randn(got)
				compareStream(t, got, k.want)
			})
		}
	}
}
