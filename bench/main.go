package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/sd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sdbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 2 && args[0] == "-compare-child" { // hidden: Compare's child process
		return runChild(ctx, args[1], stderr)
	}
	fs := flag.NewFlagSet("sdbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		model     = fs.String("model", "", "model folder (default: the generated SD 1.5 model, created in the cache on first use)")
		arch      = fs.String("arch", "sd15", "architecture for MAC counts: sd15 or tiny")
		attention = fs.String("attention", "efficient", "attention form of the generated default model: efficient or baddbmm")
		lib       = fs.String("lib", "", "ONNX Runtime library (default: $ONNXRUNTIME_SHARED_LIBRARY_PATH, the setup cache, the system)")
		n         = fs.Int("n", 8, "requests in a stream")
		c         = fs.Int("c", 0, "requests in flight at once in the engine modes (default: n)")
		size      = fs.Int("size", 256, "image width and height")
		steps     = fs.Int("steps", 10, "denoising steps")
		sched     = fs.String("scheduler", "", "scheduler (default: the model's)")
		guidance  = fs.Float64("guidance", 7.5, "guidance scale (> 1)")
		prompts   = fs.String("prompts", "", "prompts separated by '|' (default: four built-in ones)")
		seed      = fs.Int64("seed", 1, "seed of the first request")
		modes     = fs.String("modes", "sequential,pipelined,batched,pipelined-full", "stream modes, comma-separated")
		rounds    = fs.Int("rounds", 1, "times each stream mode runs (order reversed every other round)")
		single    = fs.Int("single", 3, "single-request pairs, sequential vs latency mode (0: skip)")
		maxBatch  = fs.Int("batch", 2, "images a UNet call in the batched mode")
		wait      = fs.Duration("batch-wait", time.Second, "batched mode's wait for a batch to fill")
		matmul    = fs.Int("matmul", 2048, "size of the MatMul peak measurement (0: skip)")
		out       = fs.String("out", "bench-out", "folder for report.json, report.md and timeline.svg")
		quiet     = fs.Bool("q", false, "no progress on stderr")
		rewrites  = fs.String("rewrites", "default", `graph rewrites at open: "default" (the library's), "none", or a comma-separated list (baddbmm, mha, foldscale)`)
		spin      = fs.Bool("spin", true, "let ONNX Runtime's idle pool threads spin (sd.SessionOptions.Spinning)")
		scaling   = fs.Bool("scaling", true, "time a UNet call on half the cores (opens a second UNet)")
		kernelsF  = fs.Bool("kernels", false, "only time the fp32 and int8 MatMul and Conv kernels (KernelLimits) and exit")
		threads   = fs.Int("threads", 0, "intra-op threads of -kernels and -compare's kernel limits (0: ORT's default)")
		compare   = fs.String("compare", "", "only compare whole images in these configurations, each in its own process (plain, rewrites, int8, stepcache, int8+stepcache; comma-separated), and exit")
		interval  = fs.Int("step-cache-interval", 3, "-compare's step cache interval")
		branch    = fs.Int("step-cache-branch", 0, "-compare's step cache branch (0: the library's default)")
		warmup    = fs.Int("warmup-steps", 0, "-compare's warm-up image steps (0: 2, or interval+1 with the step cache)")
		kRounds   = fs.Int("kernel-rounds", 5, "-compare's kernel limit rounds, before and after the images (0: skip)")
		devices   = fs.String("device", "", `components off the CPU, "component=device,..." (e.g. "unet=webgpu,vae_decoder=webgpu")`)
		rwCache   = fs.String("rewrite-cache", "", "-compare's rewrite cache (sd.WithRewriteCache; default: the library's)")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *kernelsF {
		rs, errs, err := KernelLimits(ctx, KernelConfig{LibraryPath: *lib, Threads: *threads, Rounds: *rounds * 5})
		if err != nil {
			return err
		}
		WriteKernels(stdout, rs, errs)
		return nil
	}
	if *compare != "" {
		cc := CompareConfig{
			ModelDir: *model, LibraryPath: *lib, RewriteCache: *rwCache, Width: *size, Height: *size, Steps: *steps,
			Scheduler: *sched, Guidance: *guidance, Seed: *seed, Rounds: *rounds, WarmupSteps: *warmup,
			StepCacheInterval: *interval, StepCacheBranch: *branch, Out: *out,
			Kernels: KernelConfig{Threads: *threads, Rounds: *kRounds},
		}
		if *kRounds == 0 {
			cc.Kernels.Rounds = -1
		}
		return runCompare(ctx, cc, *compare, *arch, *attention, *prompts, *quiet, stdout, stderr)
	}
	cfg := Config{
		ModelDir: *model, LibraryPath: *lib,
		Requests: *n, Concurrency: *c, Width: *size, Height: *size, Steps: *steps,
		Scheduler: *sched, Guidance: *guidance, Seed: *seed,
		Rounds: *rounds, LatencyRepeats: *single, MaxBatch: *maxBatch, BatchWait: *wait,
		MatMulN: *matmul, NoScaling: !*scaling, NoSpinning: !*spin,
	}
	switch *rewrites {
	case "default":
	case "none", "":
		cfg.NoRewrites = true
	default:
		for _, r := range strings.Split(*rewrites, ",") {
			cfg.Rewrites = append(cfg.Rewrites, sd.Rewrite(strings.TrimSpace(r)))
		}
	}
	if *single == 0 {
		cfg.LatencyRepeats = -1
	}
	if *matmul == 0 {
		cfg.MatMulN = -1
	}
	var err error
	if cfg.Devices, err = ParseDevices(*devices); err != nil {
		return err
	}
	if cfg.Arch, err = modelgen.ConfigByName(*arch); err != nil {
		return err
	}
	if cfg.Attention, err = modelgen.ParseAttention(*attention); err != nil {
		return fmt.Errorf("-attention: %w", err)
	}
	if *prompts != "" {
		cfg.Prompts = strings.Split(*prompts, "|")
	}
	for _, m := range strings.Split(*modes, ",") {
		mode, err := ParseMode(strings.TrimSpace(m))
		if err != nil {
			return err
		}
		cfg.Modes = append(cfg.Modes, mode)
	}
	if !*quiet {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	var werr error
	cfg.OnProgress = func(r *Report) { werr = writeReport(*out, r) } // the figures so far
	rep, err := Run(ctx, cfg)
	if err != nil {
		return errors.Join(err, werr)
	}
	if err := writeReport(*out, rep); err != nil {
		return err
	}
	return rep.WriteMarkdown(stdout)
}

// runCompare is the -compare mode.
func runCompare(ctx context.Context, cc CompareConfig, list, arch, attention, prompts string, quiet bool, stdout, stderr io.Writer) error {
	if cc.StepCacheInterval < 1 {
		return fmt.Errorf("bench: -step-cache-interval %d, want ≥ 1", cc.StepCacheInterval)
	}
	var err error
	if cc.Variants, err = ParseVariants(list); err != nil {
		return err
	}
	if cc.Arch, err = modelgen.ConfigByName(arch); err != nil {
		return err
	}
	if cc.Attention, err = modelgen.ParseAttention(attention); err != nil {
		return fmt.Errorf("-attention: %w", err)
	}
	if prompts != "" {
		cc.Prompt, _, _ = strings.Cut(prompts, "|")
	}
	if !quiet {
		cc.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	var werr error
	cc.OnProgress = func(r *CompareReport) { werr = writeCompare(cc.Out, r) }
	rep, err := Compare(ctx, cc)
	if rep == nil {
		return err
	}
	if err := errors.Join(err, werr, writeCompare(cc.Out, rep)); err != nil {
		rep.WriteMarkdown(stdout)
		return err
	}
	return rep.WriteMarkdown(stdout)
}

// writeFile creates dir/name and writes it with f.
func writeFile(dir, name string, f func(io.Writer) error) error {
	file, err := os.Create(filepath.Join(dir, name))
	if err != nil {
		return err
	}
	return errors.Join(f(file), file.Close())
}

func writeCompare(dir string, rep *CompareReport) error {
	return errors.Join(writeFile(dir, "report.json", rep.WriteJSON), writeFile(dir, "report.md", rep.WriteMarkdown))
}

// writeReport writes report.json, report.md and timeline.svg to dir.
func writeReport(dir string, rep *Report) error {
	return errors.Join(
		writeFile(dir, "report.json", rep.WriteJSON),
		writeFile(dir, "report.md", rep.WriteMarkdown),
		writeFile(dir, "timeline.svg", func(w io.Writer) error { return rep.WriteTimelineSVG(w, 1) }),
	)
}
