//go:build integration

package rewrite_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestPerfInt8UNet times UNet calls of $SD_MODEL_DIR at $PERF_SIZE (512)
// pixels, batch 2, in the configurations $PERF_CONFIGS (plain: the file as
// it is; fp32: baddbmm + mha; int8: those and Quantize, MatMul and Conv;
// int8-matmul: MatMul only), all open at once, $PERF_ROUNDS × $PERF_CALLS
// (2 × 3) calls each, alternating between them (order reversed every
// other call; the first call of each is the warm-up), the best of two
// 2048³ MatMuls timed before each call. It logs each call's time and its
// % of that MatMul, the ratios call by call, and the int8 output's error
// against fp32's on the same input. The rewrite
// cache is $PERF_CACHE (default ~/.cache/sdpipe/rewritten).
func TestPerfInt8UNet(t *testing.T) {
	dir := testenv.Measure(t, "SD_MODEL_DIR", "a model folder")
	size := testenv.EnvInt(t, "PERF_SIZE", 512, 0)
	calls := testenv.EnvInt(t, "PERF_CALLS", 3, 0)
	rounds := testenv.EnvInt(t, "PERF_ROUNDS", 2, 0)
	configs := strings.Split(cmpOr(os.Getenv("PERF_CONFIGS"), "plain,fp32,int8"), ",")
	cache := cmpOr(os.Getenv("PERF_CACHE"), filepath.Join(cachedir.Dir(), "rewritten"))
	src := filepath.Join(dir, "unet", "model.onnx")
	rs := []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}
	path := map[string]string{}
	for _, c := range configs {
		start := time.Now()
		switch c {
		case "plain":
			path[c] = src
		case "fp32":
			res, err := rewrite.Prepare(src, rs, cache)
			if err != nil {
				t.Fatal(err)
			}
			path[c] = res.Path
			t.Logf("fp32: %v in %v", res.Report, time.Since(start))
		case "int8-static":
			// ranges from random inputs at 256²: right for timing, not
			// for quality
			fp, err := rewrite.Prepare(src, rs, cache)
			if err != nil {
				t.Fatal(err)
			}
			values := rewrite.ConvValues(testenv.ReadModel(t, fp.Path))
			ranges, err := rewrite.Calibrate(t.Context(), fp.Path, values, [][]ort.Tensor{unetInputs(256)}, ort.Options{})
			if err != nil {
				t.Fatal(err)
			}
			res, err := rewrite.Build(src, rewrite.Plan{Rewrites: rs, Int8: &rewrite.QuantizeOptions{MatMul: true, Conv: true, Ranges: rewrite.WidenRanges(ranges, 0.1)}}, cache)
			if err != nil {
				t.Fatal(err)
			}
			path[c] = res.Path
			t.Logf("%s: %v; %v (cached %v) in %v", c, res.Rewrites, res.Int8, res.Cached, time.Since(start))
		case "int8", "int8-matmul":
			res, err := rewrite.Build(src, rewrite.Plan{Rewrites: rs, Int8: &rewrite.QuantizeOptions{MatMul: true, Conv: c == "int8"}}, cache)
			if err != nil {
				t.Fatal(err)
			}
			path[c] = res.Path
			t.Logf("%s: %v; %v (cached %v) in %v", c, res.Rewrites, res.Int8, res.Cached, time.Since(start))
		default:
			t.Fatalf("PERF_CONFIGS: unknown %q", c)
		}
	}
	in := unetInputs(int64(size))
	ins, outs, err := ort.ReadIO(src)
	if err != nil {
		t.Fatal(err)
	}
	gmac := sd15GMAC[size]
	steady := map[string][]float64{}
	pct := map[string][]float64{}
	outputs := map[string][]float32{}
	// every configuration open at once, calls alternating, so that the
	// machine's load falls on all of them alike
	sess := map[string]*ort.Session{}
	for _, c := range configs {
		t0 := time.Now()
		s, err := ort.Open(t.Context(), path[c], ins, outs[:1], ort.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		sess[c] = s
		t.Logf("%-11s open %.1fs, VmHWM %.2f GiB", c, time.Since(t0).Seconds(), vmHWM(t)/(1<<30))
	}
	mm, mmRun := matmulSession(t, 0)
	defer mm.Close()
	times := map[string][]float64{}
	for r := range rounds * calls {
		order := slices.Clone(configs)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, c := range order {
			peak := max(mmRun(), mmRun())
			out := []ort.Tensor{{Shape: []int64{2, 4, int64(size / 8), int64(size / 8)}}}
			t1 := time.Now()
			if err := sess[c].Run(t.Context(), in, out); err != nil {
				t.Fatal(err)
			}
			d := time.Since(t1).Seconds()
			times[c] = append(times[c], d)
			if _, ok := outputs[c]; !ok {
				outputs[c] = out[0].Data.([]float32)
			}
			p := 0.0
			if gmac > 0 {
				p = 100 * 2 * gmac / d / peak
			}
			if r > 0 { // the first call of each is the warm-up
				steady[c] = append(steady[c], d)
				pct[c] = append(pct[c], p)
			}
			t.Logf("call %d %-11s %6.2fs (MatMul %3.0f GFLOP/s: %3.0f %%) load %s", r+1, c, d, peak, p, loadavg())
		}
	}
	for _, c := range configs {
		st := slices.Clone(steady[c])
		slices.Sort(st)
		t.Logf("%-11s calls %s s; steady median %.2f s; %% of MatMul %s", c, fmtTimes(times[c]), st[len(st)/2], fmtTimes(pct[c]))
	}
	for _, c := range configs[1:] {
		var rs []float64
		for i := range steady[c] {
			rs = append(rs, steady[configs[0]][i]/steady[c][i])
		}
		slices.Sort(rs)
		t.Logf("%s ÷ %s, call by call: %s (median %.2f×)", configs[0], c, fmtTimes(rs), rs[len(rs)/2])
	}
	t.Logf("VmHWM %.2f GiB (all configurations open)", vmHWM(t)/(1<<30))
	ref := outputs["fp32"]
	if ref == nil {
		ref = outputs["plain"]
	}
	for _, c := range configs {
		if ref != nil && outputs[c] != nil {
			e := rewrite.Diff(ref, outputs[c])
			t.Logf("%-11s output vs fp32: relative RMS %.4f, max abs %.4f", c, e.RelRMS, e.MaxAbs)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return fmt.Sprintf("%s %s %s", f[0], f[1], f[2])
}
