//go:build integration

package rewrite_test

// Measurements for BENCHMARKS-perf.md. Each run measures one configuration
// in its own process, so that /proc/self/status VmHWM is that
// configuration's peak RSS, and measures the machine's MatMul peak in the
// same process right before. Run with:
//
//	SD_MODEL_DIR=/tmp/sd15-bad PERF_REWRITES=baddbmm go test -tags integration \
//	    -run TestPerfUNet -v -timeout 30m ./internal/rewrite/

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
)

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return v
}

// vmHWM returns the process's peak resident set size in bytes.
func vmHWM(t *testing.T) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if f, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(f), " kB"), 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatal("no VmHWM")
	return 0
}

func fill(r *rand.Rand, n int64) []float32 {
	d := make([]float32, n)
	for i := range d {
		d[i] = float32(r.NormFloat64())
	}
	return d
}

func vi(name string, dims ...int64) onnxpb.ValueInfo {
	v := onnxpb.ValueInfo{Name: name, ElemType: onnxpb.Float}
	for _, d := range dims {
		v.Dims = append(v.Dims, onnxpb.Dim{Value: d})
	}
	return v
}

// matmulPeak times a 2048³ MatMul through ONNX Runtime and returns the best
// GFLOP/s of five calls.
func matmulPeak(t *testing.T, threads int) float64 {
	const n = 2048
	m := &onnxpb.Model{IRVersion: 8, OpsetImports: []onnxpb.OperatorSet{{Version: 17}}, Graph: &onnxpb.Graph{
		Name:   "mm",
		Input:  []onnxpb.ValueInfo{vi("a", n, n), vi("b", n, n)},
		Output: []onnxpb.ValueInfo{vi("c", n, n)},
		Nodes:  []*onnxpb.Node{{Name: "mm", OpType: "MatMul", Input: []string{"a", "b"}, Output: []string{"c"}}},
	}}
	data, err := onnxpb.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	io := []ort.IOInfo{{Name: "a", DType: ort.Float32, Shape: []int64{n, n}}, {Name: "b", DType: ort.Float32, Shape: []int64{n, n}}}
	s, err := ort.OpenData(t.Context(), "matmul", data, "", io, []ort.IOInfo{{Name: "c", DType: ort.Float32, Shape: []int64{n, n}}}, ort.Options{IntraOpThreads: threads})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(1, 1))
	in := []ort.Tensor{{Shape: []int64{n, n}, Data: fill(r, n*n)}, {Shape: []int64{n, n}, Data: fill(r, n*n)}}
	out := []ort.Tensor{{Shape: []int64{n, n}}}
	best := math.Inf(1)
	for range 5 {
		start := time.Now()
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		best = min(best, time.Since(start).Seconds())
	}
	return 2 * n * n * n / best / 1e9
}

// sd15GMAC is the multiply-accumulate count of one SD 1.5 UNet call at
// batch 2 (../shared/PERF-FACTS.md, counted on the ONNX graph).
var sd15GMAC = map[int]float64{256: 180.1, 512: 803.3}

// TestPerfUNet times UNet calls of $SD_MODEL_DIR at $PERF_SIZE (512)
// pixels, batch 2, with $PERF_REWRITES, $PERF_THREADS (0 = ORT default),
// $PERF_CALLS (5) calls, $PERF_NO_ARENA and $PERF_NO_PATTERN.
func TestPerfUNet(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	if dir == "" {
		t.Skip("SD_MODEL_DIR not set")
	}
	rs, err := rewrite.Parse(os.Getenv("PERF_REWRITES"))
	if err != nil {
		t.Fatal(err)
	}
	size := envInt(t, "PERF_SIZE", 512)
	calls := envInt(t, "PERF_CALLS", 5)
	threads := envInt(t, "PERF_THREADS", 0)
	o := ort.Options{IntraOpThreads: threads, DisableMemArena: os.Getenv("PERF_NO_ARENA") != "", DisableMemPattern: os.Getenv("PERF_NO_PATTERN") != ""}

	peak := matmulPeak(t, threads)
	src := filepath.Join(dir, "unet", "model.onnx")
	start := time.Now()
	res, err := rewrite.Prepare(src, rs, "")
	if err != nil {
		t.Fatal(err)
	}
	prep := time.Since(start)
	start = time.Now()
	s, err := res.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	open := time.Since(start)
	res.Data = nil
	rssOpen := vmHWM(t)

	lat := int64(size / 8)
	r := rand.New(rand.NewPCG(3, 4))
	in := []ort.Tensor{
		{Shape: []int64{2, 4, lat, lat}, Data: fill(r, 2*4*lat*lat)},
		{Shape: []int64{2}, Data: []float32{501, 501}},
		{Shape: []int64{2, 77, 768}, Data: fill(r, 2*77*768)},
	}
	out := []ort.Tensor{{Shape: []int64{2, 4, lat, lat}}}
	var times []float64
	for range calls {
		start := time.Now()
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Since(start).Seconds())
	}
	steady := slices.Clone(times[min(2, len(times)-1):])
	slices.Sort(steady)
	med := steady[len(steady)/2]
	pct := ""
	if g, ok := sd15GMAC[size]; ok {
		pct = fmt.Sprintf("%.0f%%", 100*2*g/med/peak)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("PERF model=%s rewrites=%q sites=%v size=%d threads=%d arena=%v pattern=%v | matmul %.0f GFLOP/s | prepare %.1fs open %.1fs | calls %s | steady median %.2fs best %.2fs = %s of peak | VmHWM open %.2f GiB, run %.2f GiB | load %s",
		dir, os.Getenv("PERF_REWRITES"), res.Report, size, threads, !o.DisableMemArena, !o.DisableMemPattern,
		peak, prep.Seconds(), open.Seconds(), fmtTimes(times), med, steady[0], pct,
		rssOpen/(1<<30), vmHWM(t)/(1<<30), load)
}

func fmtTimes(ts []float64) string {
	var s []string
	for _, t := range ts {
		s = append(s, fmt.Sprintf("%.2f", t))
	}
	return strings.Join(s, " ")
}

var _ = binary.LittleEndian
