package sd_test

import (
	"context"
	"errors"
	"math"
	"os"
	"slices"
	"testing"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	. "github.com/sdpipe/sdpipe/sd"
)

// TestInt8Measured measures int8 against float32 on the model folder
// $SDPIPE_INT8_MEASURE (e.g. the SD 1.5-architecture model cmd/sdgen
// writes), both open in one process with the default rewrites: at
// $SDPIPE_INT8_SIZE (256) pixels and $SDPIPE_INT8_STEPS (10) steps of the
// model's scheduler, guided, it runs the float32 trajectory and calls the
// int8 UNet on the same inputs at every step (alternating which goes
// first), logging each step's relative RMS error of the UNet output and
// both call times; then it generates $SDPIPE_INT8_SEEDS (2) images with
// each from the same seeds and logs the int8 image's PSNR against float32
// (pixels in [0, 1]), and the whole-image times. With
// $SDPIPE_INT8_ONLY=int8 it opens only the int8 model and logs the peak RSS
// of one image (SDPIPE_INT8_ONLY=fp32: the float32 one). The rewrite cache is $SDPIPE_INT8_CACHE, else the
// default. It runs only when asked: it is a measurement (see
// BENCHMARKS.md); the bound it checks (each step's relative error below
// 1, what a zero output would give) only catches a broken int8 model.
func TestInt8Measured(t *testing.T) {
	dir := testenv.Measure(t, "SDPIPE_INT8_MEASURE", "a model folder to measure int8 on it")
	size := testenv.EnvInt(t, "SDPIPE_INT8_SIZE", 256, 1)
	steps := testenv.EnvInt(t, "SDPIPE_INT8_STEPS", 10, 1)
	seeds := testenv.EnvInt(t, "SDPIPE_INT8_SEEDS", 2, 1)
	opts := []LoadOption{WithoutVAEEncoder()}
	if c := os.Getenv("SDPIPE_INT8_CACHE"); c != "" {
		opts = append(opts, WithRewriteCache(c))
	}
	ctx := t.Context()
	rss := func() float64 { return testenv.ProcStatus(t, "VmRSS") / (1 << 30) }
	hwm := func() float64 { return testenv.ProcStatus(t, "VmHWM") / (1 << 30) }
	open := func(o ...LoadOption) *Folder {
		start := time.Now()
		f, err := OpenFolder(ctx, dir, append(slices.Clone(opts), o...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		t.Logf("opened in %v: UNet %s; VmRSS %.2f GiB, VmHWM %.2f GiB", time.Since(start).Round(time.Millisecond),
			f.Load().Rewrites[UNet], rss(), hwm())
		return f
	}
	req := func(seed int64) pipeline.Request {
		return pipeline.Request{Prompt: "a photograph of a mountain lake at sunrise", Width: size, Height: size,
			Steps: steps, Seed: seed}
	}
	if only := os.Getenv("SDPIPE_INT8_ONLY"); only != "" {
		var f *Folder
		switch only {
		case "int8":
			f = open(WithInt8(Int8{}))
		case "fp32":
			f = open()
		default:
			t.Fatalf("SDPIPE_INT8_ONLY=%q: want int8 or fp32", only)
		}
		p := newPipeline(t, f.Components())
		start := time.Now()
		if _, err := p.Generate(ctx, req(1)); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s only: one %d² %d-step image in %.1f s; VmHWM %.2f GiB", only, size, steps, time.Since(start).Seconds(), hwm())
		return
	}
	fp := open()
	q := open(WithInt8(Int8{}))
	// the float32 trajectory, the int8 UNet called on the same inputs
	var fpTimes, qTimes, rel []float64
	c := fp.Components()
	call := 0
	c.UNet = pipeline.DenoiserFunc(func(ctx context.Context, x *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error) {
		run := func(m interface {
			Predict(context.Context, *tensor.Dense, []float64, *tensor.Dense) (*tensor.Dense, error)
		}, times *[]float64) (*tensor.Dense, error) {
			start := time.Now()
			y, err := m.Predict(ctx, x, ts, cond)
			*times = append(*times, time.Since(start).Seconds())
			return y, err
		}
		var a, b *tensor.Dense
		var err, err2 error
		if call%2 == 0 {
			a, err = run(fp.UNet, &fpTimes)
			b, err2 = run(q.UNet, &qTimes)
		} else {
			b, err2 = run(q.UNet, &qTimes)
			a, err = run(fp.UNet, &fpTimes)
		}
		call++
		if err != nil || err2 != nil {
			return nil, errors.Join(err, err2)
		}
		rel = append(rel, testenv.RelRMS(a.Data().([]float32), b.Data().([]float32)))
		return a, nil
	})
	p := newPipeline(t, c)
	if _, err := p.Generate(ctx, req(1)); err != nil {
		t.Fatal(err)
	}
	for i := range rel {
		if !(rel[i] < 1) {
			// no closer to float32 than a zero output would be
			t.Errorf("step %d: int8 UNet output relative error %.3g: broken", i+1, rel[i])
		}
		t.Logf("step %2d: UNet output relative RMS error %.4f; call float32 %.3f s, int8 %.3f s", i+1, rel[i], fpTimes[i], qTimes[i])
	}
	t.Logf("UNet call at %d², batch 2: float32 median %.3f s, int8 median %.3f s (%.2f×); relative error median %.4f, max %.4f",
		size, median(fpTimes), median(qTimes), median(fpTimes)/median(qTimes), median(rel), slices.Max(rel))
	// whole images, each from its own trajectory
	pf, pq := newPipeline(t, fp.Components()), newPipeline(t, q.Components())
	var tf, tq []float64
	for s := range seeds {
		var imgs [2][]float32
		for k, pp := range []*pipeline.Pipeline{pf, pq} {
			if s%2 == 1 {
				k = 1 - k
				pp = []*pipeline.Pipeline{pf, pq}[k]
			}
			start := time.Now()
			res, err := pp.Generate(ctx, req(int64(s+1)))
			if err != nil {
				t.Fatal(err)
			}
			d := time.Since(start).Seconds()
			if k == 0 {
				tf = append(tf, d)
			} else {
				tq = append(tq, d)
			}
			imgs[k] = res.Pixels.Data().([]float32)
		}
		t.Logf("seed %d: int8 image PSNR %.1f dB against float32", s+1, psnr(imgs[0], imgs[1]))
	}
	t.Logf("whole %d² %d-step image: float32 %v s, int8 %v s; VmHWM %.2f GiB (both open)", size, steps, tf, tq, hwm())
}

func newPipeline(t *testing.T, c pipeline.Components) *pipeline.Pipeline {
	t.Helper()
	p, err := pipeline.New(c, pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// psnr of got against ref, pixels in [0, 1].
func psnr(ref, got []float32) float64 {
	var s float64
	for i := range ref {
		d := float64(ref[i]) - float64(got[i])
		s += d * d
	}
	mse := s / float64(len(ref))
	return 10 * math.Log10(1/mse)
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
