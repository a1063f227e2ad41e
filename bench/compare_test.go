package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestMain lets the test binary stand in for the bench binary as
// Compare's child process.
func TestMain(m *testing.M) {
	if os.Getenv("SDBENCH_TEST_CHILD") == "1" {
		if err := run(context.Background(), os.Args[1:], os.Stdout, os.Stderr); err != nil {
			fmt.Fprintln(os.Stderr, "sdbench child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestParseVariants(t *testing.T) {
	got, err := ParseVariants("plain, int8,int8+stepcache")
	if err != nil || !slices.Equal(got, []Variant{Plain, Int8, Int8StepCache}) {
		t.Errorf("ParseVariants: %v, %v", got, err)
	}
	for _, s := range []string{"plain,fp16", "int8,int8", "", "plain,"} {
		if _, err := ParseVariants(s); err == nil {
			t.Errorf("%q: no error", s)
		}
	}
	for _, v := range AllVariants {
		o, err := v.options(3, 0)
		if err != nil || len(o) == 0 && v != Rewrites {
			t.Errorf("%s: %d options, %v", v, len(o), err)
		}
	}
}

func TestCompareOrder(t *testing.T) {
	got := compareOrder([]Variant{Plain, Int8, StepCache}, 3)
	want := [][]Variant{{Plain, Int8, StepCache}, {StepCache, Int8, Plain}, {Plain, Int8, StepCache}}
	if len(got) != len(want) {
		t.Fatalf("%d rounds, want %d", len(got), len(want))
	}
	for r := range want {
		if !slices.Equal(got[r], want[r]) {
			t.Errorf("round %d: %v, want %v", r+1, got[r], want[r])
		}
	}
}

func TestPSNR(t *testing.T) {
	ref := []float32{0, 0.5, 1, 0.25}
	if _, same, err := psnr(ref, slices.Clone(ref)); err != nil || !same {
		t.Errorf("equal images: identical %v, %v", same, err)
	}
	got := []float32{0.1, 0.4, 0.9, 0.35} // every pixel off by 0.1: MSE 0.01
	if db, same, err := psnr(ref, got); err != nil || same || math.Abs(db-20) > 1e-4 {
		t.Errorf("PSNR %v dB (identical %v, %v), want 20", db, same, err)
	}
	if _, _, err := psnr(ref, got[:2]); err == nil {
		t.Error("images of different sizes: no error")
	}
}

func TestCallLimits(t *testing.T) {
	m := MACs{Conv: 10e9, MatMul: 6e9, Attention: 2e9}
	runs := []KernelRun{
		{Results: []KernelResult{
			{Name: "MatMul fp32", Family: "MatMul", FP32: true, GOPS: 100},
			{Name: "Conv fp32", Family: "Conv", FP32: true, GOPS: 50},
			{Name: "mm8", Family: "MatMul", GOPS: 200},
			{Name: "cv8", Family: "Conv", GOPS: 400},
		}},
		{Results: []KernelResult{
			{Name: "MatMul fp32", Family: "MatMul", FP32: true, GOPS: 80}, // slower: not the limit
			{Name: "mm8b", Family: "MatMul", GOPS: 250},
		}},
	}
	l := callLimits(m, runs)
	// fp32: 2·10/50 + 2·6/100 = 0.4 + 0.12; int8: 2·10/400 + 2·4/250 + 2·2/100
	if want := 0.52; math.Abs(l.FP32S-want) > 1e-9 {
		t.Errorf("fp32 limit %v s, want %v", l.FP32S, want)
	}
	if want := 0.05 + 0.032 + 0.04; math.Abs(l.Int8S-want) > 1e-9 {
		t.Errorf("int8 limit %v s, want %v", l.Int8S, want)
	}
	if l.MatMulInt8By != "mm8b" || l.ConvInt8By != "cv8" {
		t.Errorf("int8 kernels %q, %q; want mm8b, cv8", l.MatMulInt8By, l.ConvInt8By)
	}
	if l := callLimits(m, nil); l.FP32S != 0 || l.Int8S != 0 {
		t.Errorf("no kernels: limits %+v", l)
	}
}

// TestCompareTiny runs every configuration on the tiny model at 64², each
// in a child process (this test binary, through TestMain), and checks the
// protocol: each child's figures and image come back, plain and the
// default rewrites give the same image within float tolerance, and
// int8+stepcache either runs or is reported refused.
func TestCompareTiny(t *testing.T) {
	dir := tinyModel(t)
	out := t.TempDir()
	cc := CompareConfig{
		ModelDir: dir, Arch: modelgen.Tiny(), RewriteCache: filepath.Join(filepath.Dir(dir), "rewritten"),
		Variants: AllVariants, Width: 64, Height: 64, Steps: 4, Rounds: 1,
		Kernels: KernelConfig{M: 64, K: 64, N: 64, Channels: 16, Side: 8, Threads: 1, Rounds: 1},
		Command: []string{os.Args[0]}, Env: []string{"SDBENCH_TEST_CHILD=1"}, Out: out,
	}
	rep, err := Compare(t.Context(), cc)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != len(AllVariants) || len(rep.Kernels) != 2 {
		t.Fatalf("%d runs, %d kernel measurements; want %d and 2", len(rep.Runs), len(rep.Kernels), len(AllVariants))
	}
	for i, run := range rep.Runs {
		if run.Variant != AllVariants[i] {
			t.Errorf("run %d is %s, want %s", i+1, run.Variant, AllVariants[i])
		}
		if run.Refused != "" {
			if run.Variant != Int8StepCache {
				t.Errorf("%s refused: %s", run.Variant, run.Refused)
			}
			continue
		}
		calls := run.FullCalls + run.ShallowCalls
		if !(run.ImageS > 0 && run.OpenS > 0 && run.WarmupS > 0) || calls < cc.Steps || run.MaxRSS <= 0 || run.SeqLen <= 0 {
			t.Errorf("%s: %+v", run.Variant, run)
		}
		if !(run.ImageS >= run.DenoiseS && run.FullMedianS > 0) {
			t.Errorf("%s: image %v s, denoise %v s, full call %v s", run.Variant, run.ImageS, run.DenoiseS, run.FullMedianS)
		}
		if run.Variant.stepCache() != (run.ShallowCalls > 0) {
			t.Errorf("%s: %d full and %d shallow UNet calls", run.Variant, run.FullCalls, run.ShallowCalls)
		}
		if _, err := os.Stat(run.PNG); err != nil {
			t.Error(err)
		}
	}
	if !strings.HasPrefix(rep.Scheduler, "(model's) ") || len(rep.Scheduler) == len("(model's) ") {
		t.Errorf("scheduler %q, want the model's, named", rep.Scheduler)
	}
	if rep.Reference != Plain {
		t.Errorf("reference %s, want plain", rep.Reference)
	}
	if s := rep.config(Rewrites); s == nil || !(s.Identical || s.PSNR > 60) {
		t.Errorf("rewrites against plain: %+v, want the same image", s)
	}
	for _, v := range []Variant{Int8, StepCache} {
		s := rep.config(v)
		if s == nil || s.Runs != 1 || s.Identical || !(s.PSNR > 0) || !(s.VsPlain > 0) || !(s.PctFP32 > 0) || !(s.PctInt8 > 0) {
			t.Errorf("%s: %+v", v, s)
		}
	}
	var md, js bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, v := range AllVariants {
		if !strings.Contains(md.String(), "| "+string(v)+" |") {
			t.Errorf("markdown lacks %s:\n%s", v, md.String())
		}
	}
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back CompareReport
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Configs) != len(AllVariants) {
		t.Errorf("JSON does not read back: %v", err)
	}
	t.Log("\n" + md.String())
}

// TestCompareErrors checks bad flags are refused before any child runs,
// and a failing child is reported by name while the others still run.
func TestCompareErrors(t *testing.T) {
	var stdout, stderr bytes.Buffer
	for _, args := range [][]string{
		{"-compare", "plain,fp16"},
		{"-compare", "plain", "-step-cache-interval", "0"},
		{"-compare", "plain", "-size", "100"},
		{"-compare", "plain", "-arch", "no-such-arch"},
	} {
		if err := run(t.Context(), args, &stdout, &stderr); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	if err := runChild(t.Context(), "{not json", &stderr); err == nil {
		t.Error("a child spec that is not JSON: no error")
	}
	testenv.RequireORT(t)
	cc := CompareConfig{
		ModelDir: filepath.Join(t.TempDir(), "missing"), Arch: modelgen.Tiny(), Variants: []Variant{Plain, Int8},
		Width: 64, Height: 64, Steps: 1, Kernels: KernelConfig{Rounds: -1},
		Command: []string{os.Args[0]}, Env: []string{"SDBENCH_TEST_CHILD=1"}, Out: t.TempDir(),
	}
	rep, err := Compare(t.Context(), cc)
	if err == nil || !strings.Contains(err.Error(), "plain round 1") || !strings.Contains(err.Error(), "int8 round 1") {
		t.Fatalf("Compare on a missing folder: %v, want both children's failures", err)
	}
	if len(rep.Runs) != 2 || rep.Runs[0].Failed == "" || rep.Configs[1].Failed == "" {
		t.Errorf("runs %+v, want both failed", rep.Runs)
	}
	var md bytes.Buffer
	if err := rep.WriteMarkdown(&md); err != nil || !strings.Contains(md.String(), "failed") {
		t.Errorf("markdown does not say failed (%v):\n%s", err, md.String())
	}
}
