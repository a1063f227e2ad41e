package models

import (
	"context"
	"math"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// plainUNet hides a step-cached UNet's StepCacheDenoiser side, so that a
// pipeline runs its full model at every step: the uncached run on the
// same sessions.
type plainUNet struct{ m *unet.Model }

func (u plainUNet) Predict(ctx context.Context, x *tensor.Dense, ts []float64, c *tensor.Dense) (*tensor.Dense, error) {
	return u.m.Predict(ctx, x, ts, c)
}

// intervalUNet is a step-cached UNet run at another interval (the split
// does not depend on it).
type intervalUNet struct {
	*unet.Model
	n int
}

func (u intervalUNet) StepCacheInterval() int { return u.n }

// psnr is the peak signal-to-noise ratio in dB of b against a, pixels in
// [0, 1].
func psnr(a, b []float32) float64 {
	var s float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		s += d * d
	}
	if s == 0 {
		return math.Inf(1)
	}
	return 10 * math.Log10(float64(len(a))/s)
}

// TestStepCacheMeasured measures step caching on a full-size model folder
// (SDPIPE_STEPCACHE_MODEL, e.g. the SD 1.5-architecture folder
// `go run ./cmd/sdgen -config sd15` writes): for each step count of
// SDPIPE_STEPCACHE_STEPS (default 20,50) a guided image of
// SDPIPE_STEPCACHE_SIZE² pixels (default 256) with the model's scheduler,
// uncached and with step caching at each interval of
// SDPIPE_STEPCACHE_INTERVAL (default 3) at branch SDPIPE_STEPCACHE_BRANCH
// (default 1), interleaved in one
// process on the same sessions, for
// SDPIPE_STEPCACHE_ROUNDS rounds (default 1). It logs each whole-image
// time, the speed-up and the cached image's PSNR against the uncached one
// at the same seed. It checks only that the split is used and the images
// are finite; it skips unless SDPIPE_STEPCACHE_MODEL is set.
//
//	SDPIPE_STEPCACHE_MODEL=/root/models/sd15 go test -run TestStepCacheMeasured -v -timeout 60m ./models
func TestStepCacheMeasured(t *testing.T) {
	dir := testenv.Measure(t, "SDPIPE_STEPCACHE_MODEL", "a model folder to measure step caching on it")
	size := testenv.EnvInts(t, "SDPIPE_STEPCACHE_SIZE", []int{256}, 1)[0]
	steps := testenv.EnvInts(t, "SDPIPE_STEPCACHE_STEPS", []int{20, 50}, 1)
	intervals := testenv.EnvInts(t, "SDPIPE_STEPCACHE_INTERVAL", []int{3}, 1)
	rounds := testenv.EnvInts(t, "SDPIPE_STEPCACHE_ROUNDS", []int{1}, 1)[0]
	branch := testenv.EnvInts(t, "SDPIPE_STEPCACHE_BRANCH", []int{1}, 1)[0]
	ctx := t.Context()
	o := session.Options{Rewrites: []string{"baddbmm", "mha"}, RewriteCache: filepath.Join(cachedir.Dir(), "rewritten"),
		DisableMemoryPattern: true}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	te, err := textenc.Open(ctx, filepath.Join(dir, "text_encoder", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	defer te.Close()
	sig, err := unet.ReadSignature(filepath.Join(dir, "unet", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	un, err := sig.OpenStepCache(ctx, o, unet.StepCache{Interval: intervals[0], Branch: branch})
	if err != nil {
		t.Fatal(err)
	}
	defer un.Close()
	t.Logf("UNet split and opened in %v: %s", time.Since(start).Round(time.Second), un.Rewrites)
	do := o
	do.DisableMemoryArena = true
	dec, err := vae.OpenDecoder(ctx, filepath.Join(dir, "vae_decoder", "model.onnx"), do)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	cfg, scaling := folderConfig(t, dir)
	c := pipeline.Components{Tokenizer: tok, TextEncoder: te, UNet: un, VAEDecoder: dec, Scheduler: cfg,
		ScalingFactor: scaling, UNetTimestepPerItem: un.PerItemTimesteps()}
	cached := make([]*pipeline.Pipeline, len(intervals))
	for k, n := range intervals {
		c.UNet = intervalUNet{un, n}
		if cached[k], err = pipeline.New(c, pipeline.Options{}); err != nil {
			t.Fatal(err)
		}
		defer cached[k].Close()
	}
	c.UNet = plainUNet{un}
	plain, err := pipeline.New(c, pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	gen := func(p *pipeline.Pipeline, n int) ([]float32, time.Duration) {
		t.Helper()
		start := time.Now()
		res, err := p.Generate(ctx, pipeline.Request{Prompt: "a photo of an astronaut riding a horse on mars",
			Width: size, Height: size, Steps: n, GuidanceScale: new(7.5), Seed: 42})
		if err != nil {
			t.Fatal(err)
		}
		px := res.Pixels.Data().([]float32)
		for _, v := range px {
			if math.IsNaN(float64(v)) {
				t.Fatal("NaN in the image")
			}
		}
		return px, time.Since(start)
	}
	// each round runs the configurations in turn, the odd rounds in the
	// reverse order (A B … B A)
	for r := range rounds {
		for _, n := range steps {
			order := make([]int, len(cached)+1) // 0: uncached, k: cached[k-1]
			for k := range order {
				order[k] = k
			}
			if r%2 == 1 {
				slices.Reverse(order)
			}
			imgs := make([][]float32, len(order))
			times := make([]time.Duration, len(order))
			full := make([]int64, len(order))
			for _, k := range order {
				p := plain
				if k > 0 {
					p = cached[k-1]
				}
				before, _ := un.Stats()
				imgs[k], times[k] = gen(p, n)
				after, _ := un.Stats()
				full[k] = after - before
			}
			t.Logf("round %d, %dx%d, %d steps: uncached %.1f s (%d full calls)", r+1, size, size, n, times[0].Seconds(), full[0])
			for k := 1; k < len(order); k++ {
				t.Logf("round %d, %dx%d, %d steps: interval %d %.1f s (%d full calls): %.2fx, PSNR %.1f dB against uncached",
					r+1, size, size, n, intervals[k-1], times[k].Seconds(), full[k], times[0].Seconds()/times[k].Seconds(), psnr(imgs[0], imgs[k]))
				if intervals[k-1] > 1 && full[k] >= full[0] {
					t.Errorf("step caching ran %d full calls, uncached %d", full[k], full[0])
				}
			}
		}
	}
}
