package ort_test

import (
	"sync"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestWebGPUConcurrentRuns calls one WebGPU session from several goroutines
// at once: every result must equal the sequential one. It logs how long
// the concurrent calls took against sequential ones (Run serialises a
// WebGPU session's calls, see webgpuRun, so about the same).
func TestWebGPUConcurrentRuns(t *testing.T) {
	testenv.RequireWebGPU(t)
	path, ins, outs := generatedUNet(t)
	s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{Provider: ort.WebGPU})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 3
	if err := s.Run(t.Context(), unetInput(9), make([]ort.Tensor, 1)); err != nil { // warm-up: the first call compiles shaders
		t.Fatal(err)
	}
	want := make([][]float32, n)
	start := time.Now()
	for k := range n {
		out := make([]ort.Tensor, 1)
		if err := s.Run(t.Context(), unetInput(k), out); err != nil {
			t.Fatal(err)
		}
		want[k] = out[0].Data.([]float32)
	}
	seq := time.Since(start)
	got := make([][]float32, n)
	var wg sync.WaitGroup
	start = time.Now()
	for k := range n {
		wg.Go(func() {
			out := make([]ort.Tensor, 1)
			if err := s.Run(t.Context(), unetInput(k), out); err != nil {
				t.Error(err)
				return
			}
			got[k] = out[0].Data.([]float32)
		})
	}
	wg.Wait()
	conc := time.Since(start)
	for k := range n {
		if d := testenv.MaxAbsDiff(got[k], want[k]); d > 1e-5 {
			t.Errorf("call %d: concurrent result differs by %g", k, d)
		}
	}
	t.Logf("%d calls: sequential %v, concurrent %v (ratio %.2f)", n, seq, conc, conc.Seconds()/seq.Seconds())
}

// TestWebGPUSessionsConcurrent runs two WebGPU sessions from their own
// goroutines at once, as the engine does with the UNet and the VAE decoder
// both on the GPU: ORT 1.29's provider shares one device context (and its
// command encoder) between them, and unserialised calls failed with
// "WebGPU validation failed. Command encoding already finished".
func TestWebGPUSessionsConcurrent(t *testing.T) {
	testenv.RequireWebGPU(t)
	path, ins, outs := generatedUNet(t)
	var ss [2]*ort.Session
	for i := range ss {
		s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{Provider: ort.WebGPU})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		ss[i] = s
	}
	want := make([]ort.Tensor, 1)
	if err := ss[0].Run(t.Context(), unetInput(1), want); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, s := range ss {
		wg.Go(func() {
			for range 4 {
				out := make([]ort.Tensor, 1)
				if err := s.Run(t.Context(), unetInput(1), out); err != nil {
					t.Error(err)
					return
				}
				if d := testenv.MaxAbsDiff(out[0].Data.([]float32), want[0].Data.([]float32)); d > 1e-5 {
					t.Errorf("concurrent result differs by %g", d)
				}
			}
		})
	}
	wg.Wait()
}

// unetInput is the generated tiny UNet's input k.
func unetInput(k int) []ort.Tensor {
	x := make([]float32, 2*4*8*8)
	for i := range x {
		x[i] = float32((i+k)%7) / 7
	}
	return []ort.Tensor{
		{Shape: []int64{2, 4, 8, 8}, Data: x},
		{Shape: []int64{2}, Data: []float32{float32(100 * k), float32(100 * k)}},
		{Shape: []int64{2, 77, 32}, Data: make([]float32, 2*77*32)},
	}
}
