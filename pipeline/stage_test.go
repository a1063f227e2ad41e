package pipeline

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestOnStep checks what the per-step hook sees: every model call in
// order, the latents of every image and the embeddings in diffusers'
// [uncond, text] order, on a guided and an unguided request.
func TestOnStep(t *testing.T) {
	p := newFake(t, &fakeUNet{}, 0, Options{})
	for _, tc := range []struct {
		guidance float64
		rows     int
	}{{7.5, 2}, {1, 1}} {
		var steps []Step
		res, err := p.Generate(t.Context(), Request{Prompt: "a cat", Steps: 4, Seed: 1, ImagesPerPrompt: 2, GuidanceScale: new(tc.guidance), Scheduler: "Euler",
			OnStep: func(s Step) { steps = append(steps, s) }})
		if err != nil {
			t.Fatal(err)
		}
		if len(steps) != 4 {
			t.Fatalf("guidance %v: %d calls of OnStep, want 4", tc.guidance, len(steps))
		}
		for i, s := range steps {
			if s.Step != i+1 || s.Total != 4 || i > 0 && s.Timestep >= steps[i-1].Timestep {
				t.Errorf("guidance %v: step %d is %d/%d at t=%v", tc.guidance, i, s.Step, s.Total, s.Timestep)
			}
			if got := fmt.Sprint(s.Latents.Shape()); got != "(2, 4, 8, 8)" {
				t.Errorf("latents shape %s", got)
			}
			if got, want := fmt.Sprint(s.TextEmbeddings.Shape()), fmt.Sprintf("(%d, 77, %d)", tc.rows, fakeHidden); got != want {
				t.Errorf("guidance %v: embeddings shape %s, want %s", tc.guidance, got, want)
			}
		}
		if tc.rows == 2 {
			emb := steps[0].TextEmbeddings.Data().([]float32)
			n := len(emb) / 2
			if same(emb[:n], emb[n:]) {
				t.Error("the uncond and cond rows are the same")
			}
		}
		if len(res.Images) != 2 {
			t.Errorf("%d images", len(res.Images))
		}
	}
}

func same(a, b []float32) bool {
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestOnStepPanic checks that a panic in one request's hook fails that
// request alone: the request batched with it finishes with the image it
// has alone.
func TestOnStepPanic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		alone := newFake(t, &fakeUNet{}, 0, Options{})
		u := &fakeUNet{delay: time.Millisecond}
		p := newFake(t, u, 0, Options{MaxBatch: 4, MaxBatchWait: time.Second})
		good := Request{Prompt: "good", Steps: 5, Seed: 3, Scheduler: "Euler a"}
		bad := Request{Prompt: "bad", Steps: 5, Seed: 4, Scheduler: "Euler a",
			OnStep: func(s Step) {
				if s.Step == 2 {
					panic("hook bug")
				}
			}}
		var wg sync.WaitGroup
		var gotGood *Result
		var goodErr, badErr error
		wg.Go(func() { gotGood, goodErr = p.Generate(t.Context(), good) })
		wg.Go(func() { _, badErr = p.Generate(t.Context(), bad) })
		wg.Wait()
		if goodErr != nil {
			t.Fatalf("the request beside the failing hook: %v", goodErr)
		}
		var se *StageError
		if !errors.As(badErr, &se) || se.Stage != "denoise" || !strings.Contains(badErr.Error(), "hook bug") {
			t.Errorf("request whose hook panicked: %v, want a denoise StageError naming the panic", badErr)
		}
		want, err := alone.Generate(t.Context(), good)
		if err != nil {
			t.Fatal(err)
		}
		if !samePixels(want.Images[0], gotGood.Images[0]) {
			t.Error("the surviving request's image differs from the same request alone")
		}
		shared := false
		for _, s := range u.sizes {
			shared = shared || s > 2
		}
		if !shared {
			t.Errorf("the two requests did not share a UNet call (sizes %v)", u.sizes)
		}
	})
}

// TestMetricsFromStageTimes checks the metrics recorded from the stages'
// timestamps on fakes whose calls take known (bubble) times: a lone
// request waits nowhere, the second of two waits for the first's stages.
func TestMetricsFromStageTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const enc, step = 5 * time.Millisecond, 3 * time.Millisecond
		p := newFake(t, &fakeUNet{delay: step}, enc, Options{})
		req := Request{Prompt: "x", Steps: 4, Scheduler: "Euler", ImagesPerPrompt: 2}
		res, err := p.Generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		m := res.Metrics
		want := RequestMetrics{Submitted: m.Submitted, Encode: enc, EncodeModel: enc, Denoise: 4 * step, DenoiseModel: 4 * step,
			Decode: 2 * enc, DecodeModel: 2 * enc, Total: enc + 4*step + 2*enc, Steps: 4, BatchSize: 1}
		if m != want {
			t.Errorf("metrics\n%+v\nwant\n%+v", m, want)
		}
		var wg sync.WaitGroup
		var second *Result
		wg.Go(func() {
			if _, err := p.Generate(t.Context(), req); err != nil {
				t.Error(err)
			}
		})
		synctest.Wait() // the first is in its text encoder
		wg.Go(func() {
			var err error
			if second, err = p.Generate(t.Context(), req); err != nil {
				t.Error(err)
			}
		})
		wg.Wait()
		// the second waits for the first's encoding, encodes beside its
		// denoising, waits for that, and decodes once the first has
		if m := second.Metrics; m.EncodeQueue != enc || m.DenoiseQueue != 4*step-enc || m.DecodeQueue != 0 || m.Denoise != 4*step || m.Total != enc+2*4*step+2*enc {
			t.Errorf("second request's metrics %+v", m)
		}
	})
}
