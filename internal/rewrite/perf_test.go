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
	"cmp"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// vmHWM returns the process's peak resident set size in bytes.
func vmHWM(t *testing.T) float64 { return testenv.ProcStatus(t, "VmHWM") }

// prepared reads $SD_MODEL_DIR, skipping the test unless it and gate are
// set, and rewrites its component with $PERF_REWRITES (no cache).
func prepared(t *testing.T, gate, component string) *rewrite.Result {
	t.Helper()
	dir := os.Getenv("SD_MODEL_DIR")
	if dir == "" || os.Getenv(gate) == "" {
		t.Skipf("SD_MODEL_DIR or %s not set", gate)
	}
	rs, err := rewrite.Parse(os.Getenv("PERF_REWRITES"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := rewrite.Prepare(filepath.Join(dir, component, "model.onnx"), rs, "")
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// unetInputs are random SD 1.5 UNet inputs at size pixels, batch 2.
func unetInputs(size int64) []ort.Tensor {
	lat := size / 8
	r := rand.New(rand.NewPCG(3, 4))
	return []ort.Tensor{
		{Shape: []int64{2, 4, lat, lat}, Data: fill(r, 2*4*lat*lat)},
		{Shape: []int64{2}, Data: []float32{501, 501}},
		{Shape: []int64{2, 77, 768}, Data: fill(r, 2*77*768)},
	}
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
	s, run := matmulSession(t, threads)
	defer s.Close()
	best := 0.0
	for range 5 {
		best = max(best, run())
	}
	return best
}

// matmulSession opens a 2048³ MatMul; run times one call and returns its
// GFLOP/s.
func matmulSession(t *testing.T, threads int) (*ort.Session, func() float64) {
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
	r := rand.New(rand.NewPCG(1, 1))
	in := []ort.Tensor{{Shape: []int64{n, n}, Data: fill(r, n*n)}, {Shape: []int64{n, n}, Data: fill(r, n*n)}}
	out := []ort.Tensor{{Shape: []int64{n, n}}}
	return s, func() float64 {
		start := time.Now()
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		return 2 * n * n * n / time.Since(start).Seconds() / 1e9
	}
}

// sd15GMAC is the multiply-accumulate count of one SD 1.5 UNet call at
// batch 2 (../shared/PERF-FACTS.md, counted on the ONNX graph).
var sd15GMAC = map[int]float64{256: 180.1, 512: 803.3}

// TestPerfUNet times UNet calls of $SD_MODEL_DIR at $PERF_SIZE (512)
// pixels, batch 2, with $PERF_REWRITES, $PERF_THREADS (0 = ORT default),
// $PERF_CALLS (5) calls, $PERF_NO_ARENA and $PERF_NO_PATTERN.
func TestPerfUNet(t *testing.T) {
	dir := testenv.Measure(t, "SD_MODEL_DIR", "a model folder")
	rs, err := rewrite.Parse(os.Getenv("PERF_REWRITES"))
	if err != nil {
		t.Fatal(err)
	}
	size := testenv.EnvInt(t, "PERF_SIZE", 512, 0)
	calls := testenv.EnvInt(t, "PERF_CALLS", 5, 0)
	threads := testenv.EnvInt(t, "PERF_THREADS", 0, 0)
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
	// a MatMul before and after each call gives the machine's speed at
	// that moment: the machine is shared, and its load changes by the
	// minute
	ms, mm := matmulSession(t, threads)
	defer ms.Close()
	var times, pcts []float64
	for range calls {
		p0 := max(mm(), mm())
		start := time.Now()
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start).Seconds()
		p := (p0 + max(mm(), mm())) / 2
		times = append(times, d)
		if g, ok := sd15GMAC[size]; ok {
			pcts = append(pcts, 100*2*g/d/p)
		}
	}
	first := min(2, len(times)-1)
	steady := slices.Clone(times[first:])
	slices.Sort(steady)
	med := steady[len(steady)/2]
	pct := ""
	if len(pcts) > 0 {
		sp := slices.Clone(pcts[first:])
		slices.Sort(sp)
		pct = fmt.Sprintf("%.0f%% (per call, of the MatMul around it: %s)", sp[len(sp)/2], fmtTimes(pcts))
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("PERF model=%s rewrites=%q sites=%v size=%d threads=%d arena=%v pattern=%v | matmul %.0f GFLOP/s | prepare %.1fs open %.1fs | calls %s | steady median %.2fs best %.2fs | %s of peak | VmHWM open %.2f GiB, run %.2f GiB | load %s",
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

// attentionModel builds one multi-head attention over q [b, n, dim] and k,
// v [b, m, dim], either as MatMul → Softmax → MatMul (the efficient
// export) or as com.microsoft.MultiHeadAttention.
func attentionModel(t *testing.T, fused bool, b, n, m, dim, heads int64) []byte {
	dh := dim / heads
	ints := func(name string, v ...int64) *onnxpb.Tensor {
		raw := make([]byte, 0, 8*len(v))
		for _, x := range v {
			raw = binary.LittleEndian.AppendUint64(raw, uint64(x))
		}
		return &onnxpb.Tensor{Name: name, Dims: []int64{int64(len(v))}, DataType: onnxpb.Int64, RawData: raw}
	}
	scale := &onnxpb.Tensor{Name: "scale", DataType: onnxpb.Float, RawData: binary.LittleEndian.AppendUint32(nil, math.Float32bits(float32(1/math.Sqrt(float64(dh)))))}
	perm := func(p ...int64) []*onnxpb.Attribute {
		return []*onnxpb.Attribute{{Name: "perm", Type: onnxpb.AttrInts, Ints: p}}
	}
	g := &onnxpb.Graph{
		Name:   "attention",
		Input:  []onnxpb.ValueInfo{vi("q", b, n, dim), vi("k", b, m, dim), vi("v", b, m, dim)},
		Output: []onnxpb.ValueInfo{vi("o", b, n, dim)},
	}
	if fused {
		g.Nodes = []*onnxpb.Node{{Name: "mha", OpType: "MultiHeadAttention", Domain: "com.microsoft",
			Input: []string{"q", "k", "v"}, Output: []string{"o"},
			Attribute: []*onnxpb.Attribute{{Name: "num_heads", Type: onnxpb.AttrInt, I: heads}}}}
	} else {
		g.Initializer = []*onnxpb.Tensor{ints("split", 0, 0, heads, dh), ints("merge", 0, 0, dim), scale}
		g.Nodes = []*onnxpb.Node{
			{Name: "rq", OpType: "Reshape", Input: []string{"q", "split"}, Output: []string{"q4"}},
			{Name: "rk", OpType: "Reshape", Input: []string{"k", "split"}, Output: []string{"k4"}},
			{Name: "rv", OpType: "Reshape", Input: []string{"v", "split"}, Output: []string{"v4"}},
			{Name: "tq", OpType: "Transpose", Input: []string{"q4"}, Output: []string{"qh"}, Attribute: perm(0, 2, 1, 3)},
			{Name: "tk", OpType: "Transpose", Input: []string{"k4"}, Output: []string{"kh"}, Attribute: perm(0, 2, 3, 1)},
			{Name: "tv", OpType: "Transpose", Input: []string{"v4"}, Output: []string{"vh"}, Attribute: perm(0, 2, 1, 3)},
			{Name: "sq", OpType: "Mul", Input: []string{"qh", "scale"}, Output: []string{"qs"}},
			{Name: "s", OpType: "MatMul", Input: []string{"qs", "kh"}, Output: []string{"sc"}},
			{Name: "p", OpType: "Softmax", Input: []string{"sc"}, Output: []string{"pr"}, Attribute: []*onnxpb.Attribute{{Name: "axis", Type: onnxpb.AttrInt, I: -1}}},
			{Name: "pv", OpType: "MatMul", Input: []string{"pr", "vh"}, Output: []string{"oh"}},
			{Name: "to", OpType: "Transpose", Input: []string{"oh"}, Output: []string{"o4"}, Attribute: perm(0, 2, 1, 3)},
			{Name: "ro", OpType: "Reshape", Input: []string{"o4", "merge"}, Output: []string{"o"}},
		}
	}
	mod := &onnxpb.Model{IRVersion: 8, OpsetImports: []onnxpb.OperatorSet{{Version: 17}, {Domain: "com.microsoft", Version: 1}}, Graph: g}
	data, err := onnxpb.Marshal(mod)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestPerfAttention compares MatMul → Softmax → MatMul with ONNX Runtime's
// MultiHeadAttention kernel at the attention shapes of an SD 1.5 UNet,
// batch 2, for $PERF_SIZE (512) pixels.
func TestPerfAttention(t *testing.T) {
	if os.Getenv("PERF_ATTENTION") == "" {
		t.Skip("PERF_ATTENTION not set")
	}
	size := int64(testenv.EnvInt(t, "PERF_SIZE", 512, 0))
	threads := testenv.EnvInt(t, "PERF_THREADS", 0, 0)
	r := rand.New(rand.NewPCG(5, 6))
	lat := size / 8
	for _, c := range []struct{ n, m, dim int64 }{
		{lat * lat, lat * lat, 320}, {lat * lat, 77, 320},
		{lat * lat / 4, lat * lat / 4, 640}, {lat * lat / 4, 77, 640},
		{lat * lat / 16, lat * lat / 16, 1280}, {lat * lat / 16, 77, 1280},
	} {
		const b, heads = 2, 8
		in := []ort.Tensor{
			{Shape: []int64{b, c.n, c.dim}, Data: fill(r, b*c.n*c.dim)},
			{Shape: []int64{b, c.m, c.dim}, Data: fill(r, b*c.m*c.dim)},
			{Shape: []int64{b, c.m, c.dim}, Data: fill(r, b*c.m*c.dim)},
		}
		io := []ort.IOInfo{{Name: "q", DType: ort.Float32}, {Name: "k", DType: ort.Float32}, {Name: "v", DType: ort.Float32}}
		var sess [2]*ort.Session
		for i, fused := range []bool{false, true} {
			s, err := ort.OpenData(t.Context(), "attention", attentionModel(t, fused, b, c.n, c.m, c.dim, heads), "", io,
				[]ort.IOInfo{{Name: "o", DType: ort.Float32}}, ort.Options{IntraOpThreads: threads})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			sess[i] = s
		}
		var best [2]float64
		var outs [2][]float32
		best[0], best[1] = math.Inf(1), math.Inf(1)
		for range 4 { // interleaved; the first round warms up
			for i, s := range sess {
				out := []ort.Tensor{{Shape: []int64{b, c.n, c.dim}}}
				start := time.Now()
				if err := s.Run(t.Context(), in, out); err != nil {
					t.Fatal(err)
				}
				best[i] = min(best[i], time.Since(start).Seconds())
				outs[i] = out[0].Data.([]float32)
			}
		}
		var diff float64
		for i := range outs[0] {
			diff = max(diff, math.Abs(float64(outs[0][i]-outs[1][i])))
		}
		fmt.Printf("ATTN size=%d n=%d m=%d dim=%d heads=%d: unfused %.1f ms, MultiHeadAttention %.1f ms (%.2f×), max |Δ| %.2g\n",
			size, c.n, c.m, c.dim, heads, 1e3*best[0], 1e3*best[1], best[0]/best[1], diff)
	}
}

// TestPerfThreads compares the UNet of $SD_MODEL_DIR on 1 and 2 intra-op
// threads at $PERF_SIZE (256) pixels, batch 2, calls interleaved, with a
// 2048³ MatMul on 1 and 2 threads beside it.
func TestPerfThreads(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	res := prepared(t, "PERF_THREADS_AB", "unet")
	size := int64(testenv.EnvInt(t, "PERF_SIZE", 256, 0))
	var sess [2]*ort.Session
	var mms [2]func() float64
	for i := range sess {
		s, err := res.Open(t.Context(), ort.Options{IntraOpThreads: i + 1})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sess[i] = s
		ms, mm := matmulSession(t, i+1)
		defer ms.Close()
		mms[i] = mm
	}
	lat := size / 8
	in := unetInputs(size)
	var unet, mm [2][]float64
	for round := range 5 {
		for i, s := range sess {
			out := []ort.Tensor{{Shape: []int64{2, 4, lat, lat}}}
			start := time.Now()
			if err := s.Run(t.Context(), in, out); err != nil {
				t.Fatal(err)
			}
			if round >= 2 {
				unet[i] = append(unet[i], time.Since(start).Seconds())
				mm[i] = append(mm[i], max(mms[i](), mms[i]()))
			}
		}
	}
	med := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("THREADS model=%s rewrites=%q size=%d | UNet 1 thread %s s, 2 threads %s s: %.2f× | MatMul 1 thread %.0f, 2 threads %.0f GFLOP/s: %.2f× | load %s",
		dir, os.Getenv("PERF_REWRITES"), size, fmtTimes(unet[0]), fmtTimes(unet[1]), med(unet[0])/med(unet[1]),
		med(mm[0]), med(mm[1]), med(mm[1])/med(mm[0]), load)
}

// TestPerfProfile runs the UNet of $SD_MODEL_DIR (with $PERF_REWRITES) at
// $PERF_SIZE (512) pixels, batch 2, under ORT's profiler ($PERF_PROFILE
// set), and prints where the last of $PERF_CALLS (3) calls spent its time,
// by operator type and by node.
func TestPerfProfile(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	res := prepared(t, "PERF_PROFILE", "unet")
	size := int64(testenv.EnvInt(t, "PERF_SIZE", 512, 0))
	calls := testenv.EnvInt(t, "PERF_CALLS", 3, 0)
	prefix := filepath.Join(t.TempDir(), "unet")
	s, err := res.Open(t.Context(), ort.Options{IntraOpThreads: testenv.EnvInt(t, "PERF_THREADS", 0, 0), ProfilePrefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	lat := size / 8
	in := unetInputs(size)
	for range calls {
		out := []ort.Tensor{{Shape: []int64{2, 4, lat, lat}}}
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil { // writes the profile
		t.Fatal(err)
	}
	files, _ := filepath.Glob(prefix + "*.json")
	if len(files) != 1 {
		t.Fatalf("profile files %v", files)
	}
	prof, err := readProfile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("PROFILE model=%s rewrites=%q size=%d, last of %d calls: %.1f ms, kernels %.1f ms\n",
		dir, os.Getenv("PERF_REWRITES"), size, calls, prof.run/1e3, prof.kernels/1e3)
	byOp := slices.SortedFunc(maps.Keys(prof.byOp), func(a, b string) int { return cmp.Compare(prof.byOp[b].us, prof.byOp[a].us) })
	fmt.Printf("| op | nodes | ms | %% of kernel time |\n|---|---:|---:|---:|\n")
	for _, op := range byOp {
		v := prof.byOp[op]
		fmt.Printf("| %s | %d | %.1f | %.1f |\n", op, v.n, v.us/1e3, 100*v.us/prof.kernels)
	}
	nodes := slices.SortedFunc(maps.Keys(prof.byNode), func(a, b string) int { return cmp.Compare(prof.byNode[b].us, prof.byNode[a].us) })
	fmt.Printf("\n| node | op | ms |\n|---|---|---:|\n")
	for _, n := range nodes[:min(25, len(nodes))] {
		fmt.Printf("| %s | %s | %.1f |\n", n, prof.byNode[n].op, prof.byNode[n].us/1e3)
	}
}

type opTime struct {
	op string
	n  int
	us float64
}

type profile struct {
	run, kernels float64 // µs
	byOp, byNode map[string]*opTime
}

// readProfile sums the kernel times of the last model_run in an ORT
// profile.
func readProfile(path string) (*profile, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var evs []struct {
		Cat  string  `json:"cat"`
		Name string  `json:"name"`
		TS   float64 `json:"ts"`
		Dur  float64 `json:"dur"`
		Args struct {
			OpName string `json:"op_name"`
		} `json:"args"`
	}
	if err := json.Unmarshal(b, &evs); err != nil {
		return nil, err
	}
	var from, to float64 = -1, -1
	for _, e := range evs {
		if e.Cat == "Session" && e.Name == "model_run" && e.TS > from {
			from, to = e.TS, e.TS+e.Dur
		}
	}
	if from < 0 {
		return nil, fmt.Errorf("%s: no model_run", path)
	}
	p := &profile{run: to - from, byOp: map[string]*opTime{}, byNode: map[string]*opTime{}}
	for _, e := range evs {
		node, ok := strings.CutSuffix(e.Name, "_kernel_time")
		if e.Cat != "Node" || !ok || e.TS < from || e.TS > to {
			continue
		}
		p.kernels += e.Dur
		o := p.byOp[e.Args.OpName]
		if o == nil {
			o = &opTime{op: e.Args.OpName}
			p.byOp[e.Args.OpName] = o
		}
		o.n++
		o.us += e.Dur
		nd := p.byNode[node]
		if nd == nil {
			nd = &opTime{op: e.Args.OpName}
			p.byNode[node] = nd
		}
		nd.n++
		nd.us += e.Dur
	}
	return p, nil
}

// TestPerfVAE times VAE decoder calls of $SD_MODEL_DIR at $PERF_SIZE (512)
// pixels, batch 1, with $PERF_REWRITES, $PERF_NO_ARENA and
// $PERF_NO_PATTERN, and reports the peak RSS after loading and after the
// calls.
func TestPerfVAE(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	res := prepared(t, "PERF_VAE", "vae_decoder")
	size := int64(testenv.EnvInt(t, "PERF_SIZE", 512, 0))
	o := ort.Options{IntraOpThreads: testenv.EnvInt(t, "PERF_THREADS", 0, 0), DisableMemArena: os.Getenv("PERF_NO_ARENA") != "", DisableMemPattern: os.Getenv("PERF_NO_PATTERN") != ""}
	s, err := res.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	res.Data = nil
	rssOpen := vmHWM(t)
	lat := size / 8
	r := rand.New(rand.NewPCG(3, 4))
	in := []ort.Tensor{{Shape: []int64{1, 4, lat, lat}, Data: fill(r, 4*lat*lat)}}
	var times []float64
	for range testenv.EnvInt(t, "PERF_CALLS", 3, 0) {
		out := []ort.Tensor{{Shape: []int64{1, 3, size, size}}}
		start := time.Now()
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		times = append(times, time.Since(start).Seconds())
	}
	fmt.Printf("VAE model=%s rewrites=%q size=%d arena=%v pattern=%v | calls %s s | VmHWM open %.2f GiB, run %.2f GiB\n",
		dir, os.Getenv("PERF_REWRITES"), size, !o.DisableMemArena, !o.DisableMemPattern, fmtTimes(times), rssOpen/(1<<30), vmHWM(t)/(1<<30))
}

// TestPerfOpenRSS opens the components of $SD_MODEL_DIR one after the
// other, as they are ($PERF_PREPACK=0 turns ORT's weight prepacking off),
// ($PERF_INIT_ALLOC=1 allocates the weights outside the memory arena), and
// prints how much resident memory each session added beside the size of
// its weights.
func TestPerfOpenRSS(t *testing.T) {
	dir := os.Getenv("SD_MODEL_DIR")
	if dir == "" || os.Getenv("PERF_OPEN_RSS") == "" {
		t.Skip("SD_MODEL_DIR or PERF_OPEN_RSS not set")
	}
	rss := func() float64 { return testenv.ProcStatus(t, "VmRSS") }
	for _, c := range []string{"text_encoder", "unet", "vae_decoder"} {
		p := filepath.Join(dir, c, "model.onnx")
		ins, outs, err := ort.ReadIO(p)
		if err != nil {
			t.Fatal(err)
		}
		var weights int64
		files, _ := filepath.Glob(filepath.Join(dir, c, "*"))
		for _, f := range files {
			if st, err := os.Stat(f); err == nil && !strings.HasSuffix(f, ".json") {
				weights += st.Size()
			}
		}
		o := ort.Options{SessionConfig: map[string]string{}}
		if os.Getenv("PERF_PREPACK") == "0" {
			o.SessionConfig["session.disable_prepacking"] = "1"
		}
		if os.Getenv("PERF_INIT_ALLOC") == "1" {
			o.SessionConfig["session.use_device_allocator_for_initializers"] = "1"
		}
		before := rss()
		s, err := ort.Open(t.Context(), p, ins, outs, o)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		fmt.Printf("OPENRSS %-12s files %.2f GiB, resident +%.2f GiB\n", c, float64(weights)/(1<<30), (rss()-before)/(1<<30))
	}
}
