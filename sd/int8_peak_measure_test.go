package sd_test

import (
	"os"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// TestInt8PeakMeasured measures the whole process's peak RSS of one image
// from the int8 model folder $SDPIPE_INT8_PEAK, opened through sd.Open as a
// user opens it (WithInt8, no VAE encoder): the peak of the open (VmHWM
// when Open returns: a cold open calibrates and quantizes, a warm one reads
// the cached int8 file), then of one guided $SDPIPE_INT8_SIZE (512) pixel
// image of $SDPIPE_INT8_STEPS (2) steps, by stage: the peak RSS is reset
// (/proc/self/clear_refs) when Generate starts and after every step, so the
// first segment is the text encoder and the first step, the last one the
// VAE decode, and the largest of the segments and the open's peak is the
// process's peak. $SDPIPE_INT8_BUDGET_GIB gives the engine that memory
// budget (WithMemoryBudget; admission then tiles the VAE when the plain
// decode does not fit), $SDPIPE_INT8_TILE tiles the VAE always in tiles
// of that many pixels, SDPIPE_INT8_UNET_ARENA=off and
// SDPIPE_INT8_TE_ARENA=off turn the UNet's or the text encoder's memory
// arena off, SDPIPE_INT8_TEXT=1 quantizes the text encoder too
// (Int8.TextEncoder), SDPIPE_INT8_OFFLOAD=1 loads the text encoder per
// request (WithOffload), $SDPIPE_INT8_CACHE is the rewrite cache. It runs only
// when asked: a measurement (BENCHMARKS.md, int8 UNet); it checks nothing
// but that the image is made.
func TestInt8PeakMeasured(t *testing.T) {
	dir := testenv.Measure(t, "SDPIPE_INT8_PEAK", "a model folder to measure the int8 peak RSS on it")
	size := testenv.EnvInt(t, "SDPIPE_INT8_SIZE", 512, 1)
	steps := testenv.EnvInt(t, "SDPIPE_INT8_STEPS", 2, 1)
	opts := []Option{WithInt8(Int8{TextEncoder: os.Getenv("SDPIPE_INT8_TEXT") == "1"}), WithoutVAEEncoder()}
	if c := os.Getenv("SDPIPE_INT8_CACHE"); c != "" {
		opts = append(opts, WithRewriteCache(c))
	}
	if g := os.Getenv("SDPIPE_INT8_BUDGET_GIB"); g != "" {
		v, err := strconv.ParseFloat(g, 64)
		if err != nil {
			t.Fatalf("SDPIPE_INT8_BUDGET_GIB: %v", err)
		}
		opts = append(opts, WithMemoryBudget(int64(v*(1<<30))))
	}
	if os.Getenv("SDPIPE_INT8_UNET_ARENA") == "off" {
		opts = append(opts, WithSessionOptions(UNet, SessionOptions{MemoryArena: Off}))
	}
	if os.Getenv("SDPIPE_INT8_TE_ARENA") == "off" {
		opts = append(opts, WithSessionOptions(TextEncoder, SessionOptions{MemoryArena: Off, MemoryPattern: Off}))
	}
	if os.Getenv("SDPIPE_INT8_OFFLOAD") != "" {
		opts = append(opts, WithOffload(Offload{TextEncoders: true}))
	}
	if tile := os.Getenv("SDPIPE_INT8_TILE"); tile != "" {
		n, err := strconv.Atoi(tile)
		if err != nil {
			t.Fatalf("SDPIPE_INT8_TILE: %v", err)
		}
		opts = append(opts, WithTiledVAE(On, n))
	}
	gib := func(field string) float64 { return float64(testenv.RSS(t, field)) / (1 << 30) }
	ctx := t.Context()
	start := time.Now()
	m, err := Open(ctx, dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	openPeak := gib("VmHWM")
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	t.Logf("open: %.1f s, UNet %s; resident %.2f GiB (Go heap in use %d MiB), peak %.2f GiB", time.Since(start).Seconds(),
		m.Load().Rewrites[UNet], gib("VmRSS"), ms.HeapInuse>>20, openPeak)
	if r := m.Load().Rewrites[TextEncoder]; r != "" {
		t.Logf("text encoder: %s", r)
	}
	if os.Getenv("SDPIPE_INT8_TRIM") != "" {
		ok := TrimHeap()
		t.Logf("malloc_trim (%v): resident %.2f GiB", ok, gib("VmRSS"))
	}
	g := 7.5
	req := Request{Prompt: "a photograph of a mountain lake at sunrise", Width: size, Height: size,
		Steps: steps, GuidanceScale: &g, Seed: 1}
	if e, err := m.EstimateMemory(req); err == nil {
		t.Logf("estimate %.2f GiB (text encoder %d MiB, UNet %d MiB, VAE decoder %d MiB, buffers %d MiB), VAE tile %d (0: untiled)",
			float64(e.Total())/(1<<30), e.TextEncoder>>20, e.UNet>>20, e.VAEDecoder>>20, e.Buffers>>20, e.VAETile)
	}
	peak := openPeak
	segment := func(what string) {
		p := gib("VmHWM")
		peak = max(peak, p)
		t.Logf("%s: peak %.2f GiB, resident after %.2f GiB", what, p, gib("VmRSS"))
		testenv.ResetPeakRSS(t)
	}
	step := 0
	req.OnStep = func(Step) {
		step++
		what := "step " + strconv.Itoa(step)
		if step == 1 {
			what = "text encoder + step 1"
		}
		segment(what)
	}
	testenv.ResetPeakRSS(t)
	start = time.Now()
	if _, err := m.Generate(ctx, req); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	segment("VAE decode")
	t.Logf("one %d² %d-step int8 image in %.1f s; process peak RSS %.2f GiB (open %.2f GiB)", size, steps, d.Seconds(), peak, openPeak)
}
