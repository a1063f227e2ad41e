package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/sd"
)

// Variant is a library configuration Compare measures on whole images.
type Variant string

// The configurations Compare knows.
const (
	// Plain is the files as they are (sd.WithoutRewrites) with ONNX
	// Runtime's default session settings: what a user of plain ONNX
	// Runtime gets, in float32.
	Plain Variant = "plain"
	// Rewrites is the library's default: sd.DefaultRewrites, float32.
	Rewrites Variant = "rewrites"
	// Int8 is sd.WithInt8 with the default rewrites.
	Int8 Variant = "int8"
	// StepCache is sd.WithStepCache(interval, branch), float32, default
	// rewrites.
	StepCache Variant = "stepcache"
	// Int8StepCache is WithInt8 and WithStepCache together; where the
	// library refuses it (unet.ErrInt8), Compare reports the refusal.
	Int8StepCache Variant = "int8+stepcache"
)

// AllVariants lists the configurations in their default order.
var AllVariants = []Variant{Plain, Rewrites, Int8, StepCache, Int8StepCache}

// ParseVariants parses a comma-separated list of configurations; each may
// appear once.
func ParseVariants(s string) ([]Variant, error) {
	var vs []Variant
	for _, f := range strings.Split(s, ",") {
		v := Variant(strings.TrimSpace(f))
		if !slices.Contains(AllVariants, v) {
			return nil, fmt.Errorf("bench: unknown configuration %q (want some of %v)", v, AllVariants)
		}
		if slices.Contains(vs, v) {
			return nil, fmt.Errorf("bench: configuration %q given twice", v)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// int8 reports whether v quantizes the UNet; stepCache whether it splits it.
func (v Variant) int8() bool      { return v == Int8 || v == Int8StepCache }
func (v Variant) stepCache() bool { return v == StepCache || v == Int8StepCache }

// file is v as a file name part.
func (v Variant) file() string { return strings.ReplaceAll(string(v), "+", "-") }

// options returns the load options of v.
func (v Variant) options(interval, branch int) ([]sd.LoadOption, error) {
	if !slices.Contains(AllVariants, v) {
		return nil, fmt.Errorf("bench: unknown configuration %q", v)
	}
	if v == Plain {
		return []sd.LoadOption{sd.WithoutRewrites()}, nil
	}
	var o []sd.LoadOption
	if v.int8() {
		o = append(o, sd.WithInt8(sd.Int8{}))
	}
	if v.stepCache() {
		o = append(o, sd.WithStepCache(interval, branch))
	}
	return o, nil
}

// CompareConfig describes a Compare run. The zero value of each field
// means its default.
type CompareConfig struct {
	ModelDir     string // "" means DefaultModel(Attention)
	Attention    modelgen.AttentionForm
	Arch         modelgen.Config // for MAC counts; zero Name means SD15
	LibraryPath  string
	RewriteCache string // sd.WithRewriteCache for every child; "" the default

	Variants  []Variant // nil means Plain, Rewrites, Int8, StepCache
	Width     int       // 0 means 512
	Height    int       // 0 means 512
	Steps     int       // 0 means 20
	Scheduler string    // "" means the model's
	Guidance  float64   // 0 means 7.5
	Prompt    string    // "" means DefaultPrompts[0]
	Seed      int64
	Rounds    int // each configuration once a round, order reversed every other round; 0 means 1
	// WarmupSteps is the warm-up image's steps; 0 means 2, and one more
	// than the step-cache interval for the step-cache configurations (so
	// that the shallow model is warmed too).
	WarmupSteps int
	// StepCacheInterval and StepCacheBranch are WithStepCache's; 0 means
	// 3 and the library's default branch.
	StepCacheInterval int
	StepCacheBranch   int

	// Kernels sizes the kernel limits measured before and after the
	// children; Kernels.Rounds < 0 skips them.
	Kernels KernelConfig

	// Command is the child's command line before the -compare-child flag;
	// nil means this executable. Env is added to the child's environment.
	Command []string
	Env     []string
	Out     string // folder for the children's results, images and logs
	Logger  *slog.Logger
	// OnProgress, when set, is called with the report so far after each
	// child, from Compare's goroutine.
	OnProgress func(*CompareReport)
}

func (c *CompareConfig) defaults() error {
	if c.Variants == nil {
		c.Variants = []Variant{Plain, Rewrites, Int8, StepCache}
	}
	c.Width, c.Height = cmp.Or(c.Width, 512), cmp.Or(c.Height, 512)
	c.Steps = cmp.Or(c.Steps, 20)
	c.Guidance = cmp.Or(c.Guidance, 7.5)
	c.Prompt = cmp.Or(c.Prompt, DefaultPrompts[0])
	c.Rounds = cmp.Or(c.Rounds, 1)
	c.StepCacheInterval = cmp.Or(c.StepCacheInterval, 3)
	c.Out = cmp.Or(c.Out, "bench-out")
	if c.Arch.Name == "" {
		c.Arch = modelgen.SD15()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case len(c.Variants) == 0:
		return fmt.Errorf("bench: no configuration to compare")
	case c.Width%8 != 0 || c.Height%8 != 0 || c.Width < 8 || c.Height < 8:
		return fmt.Errorf("bench: size %dx%d is not a positive multiple of 8", c.Width, c.Height)
	case c.Steps < 1 || c.Rounds < 1 || c.WarmupSteps < 0:
		return fmt.Errorf("bench: steps and rounds must be positive")
	case !(c.Guidance > 1):
		return fmt.Errorf("bench: guidance %v must be above 1", c.Guidance)
	case c.StepCacheInterval < 1:
		return fmt.Errorf("bench: step cache interval %d, want ≥ 1", c.StepCacheInterval)
	}
	for _, v := range c.Variants {
		if _, err := v.options(1, 0); err != nil {
			return err
		}
	}
	return nil
}

// warmupSteps returns the warm-up image's steps for v.
func (c *CompareConfig) warmupSteps(v Variant) int {
	if c.WarmupSteps > 0 {
		return c.WarmupSteps
	}
	if v.stepCache() {
		return max(2, c.StepCacheInterval+1)
	}
	return 2
}

// compareOrder returns the configurations of each round: as given in odd
// rounds, reversed in even ones (A B B A over two rounds), so that drift in
// the machine's speed falls on all of them alike.
func compareOrder(vs []Variant, rounds int) [][]Variant {
	out := make([][]Variant, rounds)
	for r := range out {
		out[r] = slices.Clone(vs)
		if r%2 == 1 {
			slices.Reverse(out[r])
		}
	}
	return out
}

// Compare measures whole images in each configuration of cc, each in a
// child process of its own (so that its peak RSS is its own), in ABBA
// order over the rounds, with the kernel limits measured in the parent
// before and after. A child that fails is reported and the others still
// run; the error returned then names it.
func Compare(ctx context.Context, cc CompareConfig) (rep *CompareReport, err error) {
	if err := cc.defaults(); err != nil {
		return nil, err
	}
	log := cc.Logger
	if cc.ModelDir == "" {
		if cc.ModelDir, err = DefaultModel(cc.Attention); err != nil {
			return nil, err
		}
	}
	if cc.Command == nil {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
		cc.Command = []string{exe}
	}
	if err := os.MkdirAll(cc.Out, 0o755); err != nil {
		return nil, err
	}
	rep = newCompareReport(cc)
	if rep.ORTVersion, _, err = ort.Version(cc.LibraryPath); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	kernels := func(when string) error {
		if cc.Kernels.Rounds < 0 {
			return nil
		}
		kc := cc.Kernels
		kc.LibraryPath = cmp.Or(kc.LibraryPath, cc.LibraryPath)
		log.Info("bench: kernel limits", "when", when)
		rs, errs, err := KernelLimits(ctx, kc)
		if err != nil {
			return err
		}
		rep.Kernels = append(rep.Kernels, KernelRun{When: when, Results: rs, Errors: errorStrings(errs)})
		return nil
	}
	if err := kernels("before"); err != nil {
		return nil, err
	}
	var failed []error
	for r, order := range compareOrder(cc.Variants, cc.Rounds) {
		for _, v := range order {
			run, err := cc.child(ctx, v, r+1)
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
			if err != nil {
				failed = append(failed, err)
				run = &ChildRun{ChildResult: ChildResult{Variant: v, Round: r + 1}, Failed: err.Error(), Load: loadAvg()}
			}
			log.Info("bench: compare", "config", v, "round", r+1, "image_s", run.ImageS, "refused", run.Refused, "failed", run.Failed)
			rep.Runs = append(rep.Runs, run)
			rep.summarize()
			if cc.OnProgress != nil {
				cc.OnProgress(rep)
			}
		}
	}
	if err := kernels("after"); err != nil {
		return rep, err
	}
	rep.summarize()
	return rep, errors.Join(failed...)
}

func errorStrings(errs []error) []string {
	var s []string
	for _, e := range errs {
		s = append(s, e.Error())
	}
	return s
}

// ChildRun is one child's result as the parent saw it.
type ChildRun struct {
	ChildResult
	// MaxRSS is the child's peak resident set (getrusage's ru_maxrss).
	MaxRSS int64   `json:"max_rss"`
	Start  string  `json:"start"`  // when the child started, UTC
	WallS  float64 `json:"wall_s"` // the whole child process
	Load   string  `json:"loadavg"`
	Failed string  `json:"failed,omitempty"`
	Log    string  `json:"log"`
}

// child runs configuration v of round r in a child process.
func (cc *CompareConfig) child(ctx context.Context, v Variant, round int) (*ChildRun, error) {
	dir, err := filepath.Abs(cc.Out)
	if err != nil {
		return nil, err
	}
	base := filepath.Join(dir, fmt.Sprintf("%d-%s", round, v.file()))
	spec := childSpec{
		Variant: v, Round: round, ModelDir: cc.ModelDir, LibraryPath: cc.LibraryPath, RewriteCache: cc.RewriteCache,
		Width: cc.Width, Height: cc.Height, Steps: cc.Steps, WarmupSteps: cc.warmupSteps(v),
		Scheduler: cc.Scheduler, Guidance: cc.Guidance, Prompt: cc.Prompt, Seed: cc.Seed,
		Interval: cc.StepCacheInterval, Branch: cc.StepCacheBranch, Result: base + ".json",
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	os.Remove(spec.Result)
	logf, err := os.Create(base + ".log")
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	args := append(slices.Clone(cc.Command[1:]), "-compare-child", string(js))
	cmd := exec.CommandContext(ctx, cc.Command[0], args...)
	cmd.Env = append(os.Environ(), cc.Env...)
	var tail bytes.Buffer
	cmd.Stdout, cmd.Stderr = logf, &tailWriter{w: logf, tail: &tail}
	cc.Logger.Info("bench: compare child", "config", v, "round", round, "log", logf.Name())
	t0 := time.Now()
	err = cmd.Run()
	run := &ChildRun{Start: t0.UTC().Format(time.TimeOnly), WallS: time.Since(t0).Seconds(), Load: loadAvg(), Log: logf.Name()}
	if cmd.ProcessState != nil {
		run.MaxRSS = maxRSS(cmd.ProcessState)
	}
	if err != nil {
		return nil, fmt.Errorf("bench: %s round %d: %w; log %s ends: %s", v, round, err, logf.Name(), strings.TrimSpace(tail.String()))
	}
	b, err := os.ReadFile(spec.Result)
	if err != nil {
		return nil, fmt.Errorf("bench: %s round %d: %w", v, round, err)
	}
	if err := json.Unmarshal(b, &run.ChildResult); err != nil {
		return nil, fmt.Errorf("bench: %s round %d: %w", v, round, err)
	}
	return run, nil
}

// tailWriter writes to w and keeps the last 1 KiB in tail.
type tailWriter struct {
	w    *os.File
	tail *bytes.Buffer
}

func (t *tailWriter) Write(p []byte) (int, error) {
	t.tail.Write(p)
	if n := t.tail.Len(); n > 1024 {
		t.tail.Next(n - 1024)
	}
	return t.w.Write(p)
}

var (
	_ pipeline.StepCacheDenoiser = (*timedUNet)(nil)
	_ pipeline.AddedDenoiser     = (*timedUNet)(nil)
	_ pipeline.CondDenoiser      = (*timedUNet)(nil)
)
