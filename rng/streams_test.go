package rng

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"testing"
)

// streamCase is one entry of testdata/streams.json (see gen_streams.py):
// consecutive randn calls of the given sizes on one freshly seeded generator,
// with the expected float32 bit patterns of each call.
type streamCase struct {
	Kind   string     `json:"kind"`
	Seed   uint64     `json:"seed"`
	Sizes  []int      `json:"sizes"`
	Values [][]uint32 `json:"values"`
}

// TestStreams checks, bit for bit, what the shared reference does not cover:
// torch's scalar path for fewer than 16 values and its cached second value,
// consecutive calls on one generator (numpy's gauss cache across odd sizes,
// torch mixing both paths) and the truncation of 64-bit torch seeds.
func TestStreams(t *testing.T) {
	data, err := os.ReadFile("testdata/streams.json")
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Cases []streamCase `json:"cases"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		t.Fatal(err)
	}
	if len(file.Cases) == 0 {
		t.Fatal("testdata/streams.json: no cases")
	}
	for _, c := range file.Cases {
		t.Run(fmt.Sprintf("%s/seed=%d/sizes=%v", c.Kind, c.Seed, c.Sizes), func(t *testing.T) {
			kind, err := ParseKind(c.Kind)
			if err != nil {
				t.Fatal(err)
			}
			g, err := New(kind, c.Seed)
			if err != nil {
				t.Fatal(err)
			}
			for call, n := range c.Sizes {
				got := make([]float32, n)
				g.Randn(got)
				want := c.Values[call]
				if len(want) != n {
					t.Fatalf("call %d: testdata has %d values, want %d", call, len(want), n)
				}
				for i, w := range want {
					if b := math.Float32bits(got[i]); b != w {
						t.Errorf("call %d (randn(%d)) [%d] = %v (%#08x), want %v (%#08x)",
							call, n, i, got[i], b, math.Float32frombits(w), w)
					}
				}
			}
		})
	}
}
