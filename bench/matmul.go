package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// MatMulResult is the speed of an n×n×n float32 matrix multiplication
// through ONNX Runtime's CPU provider on a number of intra-op threads.
type MatMulResult struct {
	N        int     `json:"n"`
	Threads  int     `json:"threads"`
	Runs     int     `json:"runs"`
	BestS    float64 `json:"best_s"`
	MedianS  float64 `json:"median_s"`
	GFLOPS   float64 `json:"gflops"`        // 2n³ over the best run
	GFLOPSMd float64 `json:"gflops_median"` // 2n³ over the median run
}

// writeMatMulModel writes a one-node MatMul model, A[n,n]·B[n,n], to dir.
func writeMatMulModel(dir string, n int) (string, error) {
	b := modelgen.NewBuilder(0, onnxpb.Float)
	a := b.Input("a", onnxpb.Float, n, n)
	bb := b.Input("b", onnxpb.Float, n, n)
	b.Output(b.Op("MatMul", []string{a, bb}), "c", onnxpb.Float, n, n)
	path := filepath.Join(dir, "matmul.onnx")
	if err := onnxpb.WriteFile(path, b.Model(17), nil); err != nil {
		return "", fmt.Errorf("bench: matmul model: %w", err)
	}
	return path, nil
}

// MatMulPeak times an n×n×n float32 MatMul through ONNX Runtime on threads
// intra-op threads: two warm-up runs, then runs runs, reporting the best
// and the median. libraryPath is as in ort.Options. It is safe for
// concurrent use, though concurrent calls disturb each other's timings.
func MatMulPeak(ctx context.Context, libraryPath string, n, threads, runs int) (MatMulResult, error) {
	dir, err := os.MkdirTemp("", "sdbench-matmul-")
	if err != nil {
		return MatMulResult{}, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)
	path, err := writeMatMulModel(dir, n)
	if err != nil {
		return MatMulResult{}, err
	}
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return MatMulResult{}, fmt.Errorf("bench: %w", err)
	}
	s, err := ort.Open(ctx, path, ins, outs, ort.Options{LibraryPath: libraryPath, IntraOpThreads: threads})
	if err != nil {
		return MatMulResult{}, fmt.Errorf("bench: %w", err)
	}
	defer s.Close()
	shape := []int64{int64(n), int64(n)}
	a, b, c := make([]float32, n*n), make([]float32, n*n), make([]float32, n*n)
	for i := range a {
		a[i] = float32(i%17) / 17
		b[i] = float32(i%13) / 13
	}
	in := []ort.Tensor{{Shape: shape, Data: a}, {Shape: shape, Data: b}}
	out := []ort.Tensor{{Shape: shape, Data: c}}
	var ds []float64
	for i := range runs + 2 {
		t0 := time.Now()
		if err := s.Run(ctx, in, out); err != nil {
			return MatMulResult{}, fmt.Errorf("bench: matmul: %w", err)
		}
		if i >= 2 {
			ds = append(ds, time.Since(t0).Seconds())
		}
	}
	slices.Sort(ds)
	flops := 2 * float64(n) * float64(n) * float64(n)
	r := MatMulResult{N: n, Threads: threads, Runs: runs, BestS: ds[0], MedianS: ds[len(ds)/2]}
	r.GFLOPS = flops / r.BestS / 1e9
	r.GFLOPSMd = flops / r.MedianS / 1e9
	return r, nil
}
