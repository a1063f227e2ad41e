package main

import (
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestKernelLimits runs every kernel of the int8 limits table at a small
// size: each must run (an ORT that lacks one would make the table lie by
// omission) and get a positive speed against its family's fp32 kernel.
func TestKernelLimits(t *testing.T) {
	testenv.RequireORT(t)
	rs, errs, err := KernelLimits(t.Context(), KernelConfig{M: 64, K: 64, N: 64, Channels: 16, Side: 8, Threads: 1, Rounds: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range errs {
		t.Error(e)
	}
	if want := len(kernels(64, 64, 64, 16, 8)); len(rs) != want {
		t.Fatalf("%d results, want %d", len(rs), want)
	}
	var b strings.Builder
	WriteKernels(&b, rs, errs)
	for _, r := range rs {
		if r.GOPS <= 0 || r.VsFP32 <= 0 || r.BestS > r.MedianS {
			t.Errorf("%s: %+v", r.Name, r)
		}
		if !strings.Contains(b.String(), r.Name) {
			t.Errorf("table lacks %s", r.Name)
		}
	}
	t.Log("\n" + b.String())
}
