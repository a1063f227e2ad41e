package pipeline

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"gorgonia.org/tensor"
)

// fakeCacheUNet is a StepCacheDenoiser over fakeUNet: a full call's deep
// features are each row's sample and conditioning mean; a shallow call
// predicts from those features instead of the sample, so a row given
// another row's features, or stale ones, changes the image.
type fakeCacheUNet struct {
	fakeUNet
	interval int
	mu       sync.Mutex
	kinds    []string // "full" or "shallow", per call
}

func (f *fakeCacheUNet) StepCacheInterval() int { return f.interval }

func (f *fakeCacheUNet) PredictStep(ctx context.Context, sample *tensor.Dense, ts []float64, cond, textEmbeds, timeIDs, timestepCond, features *tensor.Dense) (*tensor.Dense, *tensor.Dense, error) {
	f.mu.Lock()
	kind := "full"
	if features != nil {
		kind = "shallow"
	}
	f.kinds = append(f.kinds, kind)
	f.mu.Unlock()
	if features == nil {
		pred, err := f.Predict(ctx, sample, ts, cond)
		if err != nil {
			return nil, nil, err
		}
		// the features: the sample itself (a copy, as a real UNet's are)
		s := sample.Shape()
		return pred, tensor.New(tensor.WithShape(s...), tensor.WithBacking(slices.Clone(sample.Data().([]float32)))), nil
	}
	if s, fs := sample.Shape(), features.Shape(); !slices.Equal(s, fs) {
		return nil, nil, fmt.Errorf("features %v for sample %v", fs, s)
	}
	// 0.1·(cached sample) + the rest as the full call
	pred, err := f.Predict(ctx, features, ts, cond)
	return pred, nil, err
}

// TestStepCacheSchedule runs the fake step-cache UNet at several
// intervals: the full model runs at every interval-th call and the
// shallow one between, the images differ from the uncached ones when the
// shallow model runs, and dynamic batching of different requests gives
// every image the pixels it has alone (each row reuses its own features).
func TestStepCacheSchedule(t *testing.T) {
	reqs := []Request{
		{Prompt: "a red fox", Seed: 1},
		{Prompt: "a lighthouse", NegativePrompt: "fog", Seed: 2, ImagesPerPrompt: 2},
		{Prompt: "a cat", Seed: 3},
	}
	for i := range reqs {
		reqs[i].Steps = 7
	}
	gen := func(p *Pipeline, r Request) []float32 {
		t.Helper()
		res, err := p.Generate(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		return res.Pixels.Data().([]float32)
	}
	newCached := func(u *fakeCacheUNet, o Options) *Pipeline {
		c := fakeComponents(t, &u.fakeUNet, 0)
		c.UNet = u
		o.DefaultWidth, o.DefaultHeight = 64, 64
		p, err := New(c, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		return p
	}
	plain := newFake(t, &fakeUNet{}, 0, Options{})
	var base [][]float32
	for _, r := range reqs {
		base = append(base, gen(plain, r))
	}
	for _, n := range []int{1, 3} {
		u := &fakeCacheUNet{interval: n}
		p := newCached(u, Options{})
		// PNDM: 7 steps are 8 UNet calls
		want := []string{}
		for i := range 8 {
			want = append(want, map[bool]string{true: "full", false: "shallow"}[i%n == 0])
		}
		shallow := 0
		for _, k := range want {
			if k == "shallow" {
				shallow++
			}
		}
		alone := make([][]float32, len(reqs))
		for i, r := range reqs {
			res, err := p.Generate(t.Context(), r)
			if err != nil {
				t.Fatal(err)
			}
			if res.Metrics.ShallowSteps != shallow {
				t.Errorf("interval %d, request %d: Metrics.ShallowSteps %d, want %d", n, i, res.Metrics.ShallowSteps, shallow)
			}
			alone[i] = res.Pixels.Data().([]float32)
			same := slices.Equal(alone[i], base[i])
			if n == 1 && !same {
				t.Errorf("interval 1, request %d: the image differs from the uncached one", i)
			}
			if n > 1 && same {
				t.Errorf("interval %d, request %d: the shallow calls changed nothing", n, i)
			}
		}
		for r := range reqs {
			if got := u.kinds[r*8 : (r+1)*8]; !slices.Equal(got, want) {
				t.Errorf("interval %d, request %d: calls %v, want %v", n, r, got, want)
			}
		}
		b := newCached(&fakeCacheUNet{interval: n, fakeUNet: fakeUNet{delay: time.Millisecond}}, Options{MaxBatch: 8, MaxBatchWait: 200 * time.Millisecond})
		var wg sync.WaitGroup
		for i, r := range reqs {
			wg.Go(func() {
				res, err := b.Generate(t.Context(), r)
				if err != nil {
					t.Error(err)
					return
				}
				if !slices.Equal(res.Pixels.Data().([]float32), alone[i]) {
					t.Errorf("interval %d, request %d: batched differs from alone", n, i)
				}
				if res.Metrics.BatchSize < 2 {
					t.Logf("interval %d, request %d ran in a batch of %d", n, i, res.Metrics.BatchSize)
				}
			})
		}
		wg.Wait()
	}
}
