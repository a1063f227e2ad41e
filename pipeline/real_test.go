package pipeline

import (
	"fmt"
	"image"
	"math"
	"testing"
)

// TestRealSamePixelsUnderBatchingAndConcurrency runs the reference model:
// a request gives the same pixels alone, inside a dynamic batch, and among
// concurrent requests on several workers.
func TestRealSamePixelsUnderBatchingAndConcurrency(t *testing.T) {
	c := referenceComponents(t)
	reqs := make([]Request, 4)
	for i := range reqs {
		reqs[i] = Request{Prompt: fmt.Sprintf("a photo of a %d", i), Width: 64, Height: 64, Steps: 6, Seed: int64(100 + i), Scheduler: "Euler a"}
	}
	checkSameUnderBatching(t, c, reqs, 4)
}

// checkSameUnderBatching runs reqs one by one on a pipeline on c, then all
// at once on a pipeline that batches up to maxBatch images per UNet call
// (subtest "batched") and on one with several workers per stage
// ("concurrent"): every request must give the same pixels as alone, and in
// the batched run some UNet call must hold more than two images.
func checkSameUnderBatching(t *testing.T, c Components, reqs []Request, maxBatch int) {
	t.Helper()
	alone, err := New(c, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	want := make([]*Result, len(reqs))
	for i, r := range reqs {
		if want[i], err = alone.Generate(t.Context(), r); err != nil {
			t.Fatal(err)
		}
	}
	for name, o := range map[string]Options{
		"batched":    {MaxBatch: maxBatch, MaxBatchWait: 200e6},
		"concurrent": {EncodeWorkers: 2, DenoiseWorkers: 3, DecodeWorkers: 2},
	} {
		t.Run(name, func(t *testing.T) {
			p, err := New(c, o)
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			got := generateAll(t, p, reqs)
			for i := range reqs {
				if got[i] == nil {
					continue
				}
				if !samePixels(got[i].Images[0], want[i].Images[0]) {
					t.Errorf("request %d: image differs from the same request run alone", i)
				}
			}
			if o.MaxBatch > 1 {
				m := p.Metrics()
				batched := false
				for size := range m.BatchSizes {
					batched = batched || size > 2
				}
				if !batched {
					t.Errorf("batch sizes %v: no request shared a UNet call", m.BatchSizes)
				}
			}
		})
	}
}

func TestRealSchedulersAndImg2Img(t *testing.T) {
	c := referenceComponents(t)
	p, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, s := range []string{"PNDMScheduler", "DDIM", "Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras"} {
		t.Run(s, func(t *testing.T) {
			res, err := p.Generate(t.Context(), Request{Prompt: "a horse", Steps: 4, Seed: 1, Scheduler: s})
			if err != nil {
				t.Fatal(err)
			}
			checkFinite(t, res)
			// img2img from that image
			res2, err := p.Generate(t.Context(), Request{Prompt: "a horse", Steps: 4, Seed: 2, Scheduler: s, InitImage: res.Images[0], Strength: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			checkFinite(t, res2)
		})
	}
}

func checkFinite(t *testing.T, res *Result) {
	t.Helper()
	for _, v := range res.Pixels.Data().([]float32) {
		if math.IsNaN(float64(v)) || v < 0 || v > 1 {
			t.Fatalf("pixel value %v", v)
		}
	}
	if b := res.Images[0].Bounds(); b != image.Rect(0, 0, 64, 64) {
		t.Fatalf("bounds %v", b)
	}
}
