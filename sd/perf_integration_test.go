//go:build integration

package sd_test

import (
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// TestOpenRewrittenIntegration opens $SD_MODEL_DIR twice with the default
// rewrites (the second time from the cache) and a warm-up at
// $PERF_WARMUP_SIZE (256) pixels, and prints the load reports.
func TestOpenRewrittenIntegration(t *testing.T) {
	dir := testenv.Measure(t, "SD_MODEL_DIR", "a model folder")
	cache := t.TempDir()
	for _, run := range []string{"first", "cached"} {
		start := time.Now()
		f, err := OpenFolder(t.Context(), dir, WithRewrites(), WithRewriteCache(cache), WithoutVAEEncoder(),
			WithWarmup(Warmup{Width: 256, Height: 256, MaxCalls: 3}))
		if err != nil {
			t.Fatal(err)
		}
		rep := f.Load()
		fmt.Printf("OPEN %s %s in %v\n  open %v\n  rewrites %v\n  warm-up %v\n  calls %v\n", run, dir, time.Since(start).Round(time.Millisecond),
			rep.Open, rep.Rewrites, rep.Warmup, rep.WarmupCalls)
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMemoryIntegration opens $SD_MODEL_DIR as the library does by default
// ($PERF_VAE_PATTERN=1 and $PERF_UNET_PATTERN=1 turn the VAE decoder's and
// the UNet's memory pattern back on, $PERF_VAE_ARENA=0 turns the VAE
// decoder's arena off, $PERF_NO_REWRITES=1 the rewrites) and
// generates one $PERF_SIZE (512) image in 2 steps, printing the resident
// and peak memory after each phase.
func TestMemoryIntegration(t *testing.T) {
	dir := testenv.Measure(t, "SD_MODEL_DIR", "a model folder")
	size := testenv.EnvInt(t, "PERF_SIZE", 512, 8)
	opts := []Option{WithoutVAEEncoder()}
	var vae, un SessionOptions
	if os.Getenv("PERF_VAE_PATTERN") == "1" {
		vae.MemoryPattern = On
	}
	if os.Getenv("PERF_UNET_PATTERN") == "1" {
		un.MemoryPattern = On
	}
	switch os.Getenv("PERF_VAE_ARENA") {
	case "0":
		vae.MemoryArena = Off
	case "1":
		vae.MemoryArena = On
	}
	opts = append(opts, WithSessionOptions(VAEDecoder, vae), WithSessionOptions(UNet, un))
	if os.Getenv("PERF_NO_REWRITES") == "1" {
		opts = append(opts, WithoutRewrites())
	}
	report := func(phase string) {
		var ms runtime.MemStats
		if os.Getenv("PERF_GC") == "1" {
			runtime.GC()
		}
		runtime.ReadMemStats(&ms)
		fmt.Printf("MEM %-10s VmRSS %.2f GiB, VmHWM %.2f GiB; Go heap in use %.2f GiB, held %.2f GiB\n", phase, testenv.ProcStatus(t, "VmRSS")/(1<<30), testenv.ProcStatus(t, "VmHWM")/(1<<30),
			float64(ms.HeapInuse)/(1<<30), float64(ms.HeapSys-ms.HeapReleased)/(1<<30))
	}
	report("start")
	m, err := Open(t.Context(), dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	report("open")
	if os.Getenv("PERF_OPEN_ONLY") == "1" {
		return
	}
	for i := range 2 {
		start := time.Now()
		if _, err := m.Generate(t.Context(), Request{Prompt: "a lighthouse", Width: size, Height: size, Steps: 2, Seed: 1, Scheduler: "Euler"}); err != nil {
			t.Fatal(err)
		}
		report(fmt.Sprintf("image %d", i+1))
		fmt.Printf("    in %v: %+v\n", time.Since(start).Round(time.Millisecond), m.Metrics())
	}
}
