package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"image"
	"math"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/rng"
)

func TestRequestValidation(t *testing.T) {
	p := newFake(t, &fakeUNet{}, 0, Options{})
	u := &fakeUNet{}
	noEnc := fakeComponents(t, u, 0)
	noEnc.VAEEncoder = nil
	p2, err := New(noEnc, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	tests := []struct {
		name  string
		p     *Pipeline
		req   Request
		field string
	}{
		{"width not multiple of 8", p, Request{Width: 65}, "Width"},
		{"height too large", p, Request{Height: 8192}, "Height"},
		{"negative steps", p, Request{Steps: -1}, "Steps"},
		{"too many steps", p, Request{Steps: 5000}, "Steps"},
		{"NaN guidance", p, Request{GuidanceScale: new(math.NaN())}, "GuidanceScale"},
		{"infinite guidance", p, Request{GuidanceScale: new(math.Inf(1))}, "GuidanceScale"},
		{"unknown scheduler", p, Request{Scheduler: "No Such Sampler"}, "Scheduler"},
		{"strength without image", p, Request{Strength: 0.5}, "Strength"},
		{"strength above 1", p, Request{InitImage: img, Strength: 1.5}, "Strength"},
		{"negative strength", p, Request{InitImage: img, Strength: -0.1}, "Strength"},
		{"init image wrong size", p, Request{InitImage: img, Width: 128, Height: 64}, "InitImage"},
		{"img2img without encoder", p2, Request{InitImage: img}, "InitImage"},
		{"too many images", p, Request{ImagesPerPrompt: 1000}, "ImagesPerPrompt"},
		{"numpy seed too large", p, Request{Seed: 1 << 40}, "Seed"},
		{"bad seed", p, Request{Seed: -5}, "Seed"},
		{"latents of wrong size", p, Request{Latents: make([]float32, 3)}, "Latents"},
		{"NaN latents", p, Request{Latents: nanLatents()}, "Latents"},
		{"unknown generator", p, Request{Generator: rng.Kind(99)}, "Generator"},
		{"eta out of range", p, Request{Eta: 2}, "Eta"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.p.Submit(t.Context(), tc.req)
			var re *RequestError
			if !errors.As(err, &re) || re.Field != tc.field || !errors.Is(err, ErrInvalidRequest) {
				t.Fatalf("Submit() = %v, want a RequestError for %s", err, tc.field)
			}
		})
	}
	if m := p.Metrics(); m.Submitted != 0 || m.Rejected == 0 {
		t.Errorf("metrics after invalid requests: %+v", m)
	}
}

// TestDefaultGuidance checks that Options.DefaultGuidance fills a
// request's nil GuidanceScale, leaves a set one (0 included) alone,
// defaults to DefaultGuidance, and is validated.
func TestDefaultGuidance(t *testing.T) {
	for _, tc := range []struct {
		opt  float64
		req  *float64
		want float64
	}{
		{0, nil, DefaultGuidance},
		{3.5, nil, 3.5},
		{3.5, new(9.0), 9},
		{3.5, new(1.0), 1},
		{3.5, new(0.0), 0},
	} {
		p := newFake(t, &fakeUNet{}, 0, Options{DefaultGuidance: tc.opt})
		h, err := p.Submit(t.Context(), Request{Steps: 2, GuidanceScale: tc.req})
		if err != nil {
			t.Fatal(err)
		}
		if got := *h.Request().GuidanceScale; got != tc.want {
			t.Errorf("DefaultGuidance %v, request %v: resolved to %v, want %v", tc.opt, tc.req, got, tc.want)
		}
		*h.Request().GuidanceScale = 50 // a copy: the job keeps its own
		if got := *h.Request().GuidanceScale; got != tc.want {
			t.Errorf("writing through Handle.Request changed the job's guidance to %v", got)
		}
		if _, err := h.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	for _, g := range []float64{-1, math.NaN(), MaxGuidance + 1} {
		if p, err := New(fakeComponents(t, &fakeUNet{}, 0), Options{DefaultGuidance: g}); err == nil {
			p.Close()
			t.Errorf("New accepted DefaultGuidance %v", g)
		}
	}
}

func nanLatents() []float32 {
	l := make([]float32, 4*8*8)
	l[3] = float32(math.NaN())
	return l
}

func TestGenerateFake(t *testing.T) {
	u := &fakeUNet{}
	p := newFake(t, u, 0, Options{})
	h, err := p.Submit(t.Context(), Request{Prompt: "a cat", NegativePrompt: "blurry", Steps: 5, Seed: 7, ImagesPerPrompt: 3, Scheduler: "Euler"})
	if err != nil {
		t.Fatal(err)
	}
	var events []Progress
	for ev := range h.Progress() {
		events = append(events, ev)
	}
	res, err := h.Wait(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Images) != 3 || fmt.Sprint(res.Seeds) != "[7 8 9]" {
		t.Fatalf("%d images, seeds %v", len(res.Images), res.Seeds)
	}
	if b := res.Images[0].Bounds(); b.Dx() != 64 || b.Dy() != 64 {
		t.Errorf("image bounds %v", b)
	}
	if len(events) != 5 || events[4].Step != 5 || events[4].Total != 5 {
		t.Errorf("progress events %+v", events)
	}
	if r := res.Request; r.NegativePrompt != "blurry" || r.Seed != 7 || r.Scheduler != "Euler" || r.ImagesPerPrompt != 3 {
		t.Errorf("resolved request %+v", r)
	}
	// guided: every call holds [uncond×3, cond×3]
	for _, s := range u.sizes {
		if s != 6 {
			t.Fatalf("UNet batch sizes %v, want 6", u.sizes)
		}
	}
	// distinct seeds give distinct images; the same seed gives the same one
	res2, err := p.Generate(t.Context(), Request{Prompt: "a cat", NegativePrompt: "blurry", Steps: 5, Seed: 8, Scheduler: "Euler"})
	if err != nil {
		t.Fatal(err)
	}
	if !samePixels(res.Images[1], res2.Images[0]) || samePixels(res.Images[0], res.Images[1]) {
		t.Error("image i of seed s must equal image 0 of seed s+i, and differ from the others")
	}
	m := p.Metrics()
	if m.Completed != 2 || m.Images != 4 || m.InFlight != 0 || m.UNetCalls != int64(len(u.sizes)) {
		t.Errorf("metrics %+v", m)
	}
}

func samePixels(a, b image.Image) bool {
	return bytes.Equal(a.(*image.NRGBA).Pix, b.(*image.NRGBA).Pix)
}

func TestGuidanceOff(t *testing.T) {
	u := &fakeUNet{}
	p := newFake(t, u, 0, Options{})
	if _, err := p.Generate(t.Context(), Request{Prompt: "x", Steps: 3, GuidanceScale: new(1.0), Scheduler: "DDIM"}); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(u.sizes) != "[1 1 1]" {
		t.Errorf("UNet batch sizes %v, want one unguided item per call", u.sizes)
	}
}

func TestRandomSeedReported(t *testing.T) {
	p := newFake(t, &fakeUNet{}, 0, Options{})
	res, err := p.Generate(t.Context(), Request{Prompt: "x", Steps: 2, Seed: -1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Seeds[0] < 0 || res.Request.Seed != res.Seeds[0] {
		t.Errorf("seed %d, request seed %d", res.Seeds[0], res.Request.Seed)
	}
	again, err := p.Generate(t.Context(), Request{Prompt: "x", Steps: 2, Seed: res.Seeds[0]})
	if err != nil {
		t.Fatal(err)
	}
	if !samePixels(res.Images[0], again.Images[0]) {
		t.Error("the reported seed does not reproduce the image")
	}
}

func TestCancelMidLoop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &fakeUNet{delay: 5 * time.Millisecond}
		p := newFake(t, u, 0, Options{DenoiseWorkers: 2})
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		h, err := p.Submit(ctx, Request{Prompt: "long", Steps: 500})
		if err != nil {
			t.Fatal(err)
		}
		other, err := p.Submit(t.Context(), Request{Prompt: "short", Steps: 5})
		if err != nil {
			t.Fatal(err)
		}
		for ev := range h.Progress() {
			if ev.Step == 3 {
				cancel()
				break
			}
		}
		start := time.Now()
		_, err = h.Wait(t.Context())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait() after cancel = %v, want context.Canceled", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("cancellation took %v", d)
		}
		if _, err := other.Wait(t.Context()); err != nil {
			t.Errorf("the other request failed: %v", err)
		}
		synctest.Wait() // the stages count a request after its handle ends
		if m := p.Metrics(); m.Canceled != 1 {
			t.Errorf("metrics %+v", m)
		}
	})
}

func TestCancelDuringCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &fakeUNet{block: make(chan struct{})} // every call blocks until canceled
		p := newFake(t, u, 0, Options{})
		h, err := p.Submit(t.Context(), Request{Prompt: "x", Steps: 5})
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the UNet call has started and blocks
		h.Cancel()
		if _, err := h.Wait(t.Context()); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait() = %v, want context.Canceled", err)
		}
	})
}

func TestFailingRequestAmongGood(t *testing.T) {
	u := &fakeUNet{}
	// poison the prompt "bad": its cond embedding mean
	emb, _ := fakeEncoder(0).Encode(t.Context(), fakeTokenizer{}.Encode("bad"), 1)
	var mean float32
	for _, v := range emb.Data().([]float32) {
		mean += v
	}
	u.failOn = mean / float32(len(emb.Data().([]float32)))
	p := newFake(t, u, 0, Options{})
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		prompt := fmt.Sprintf("good %d", i)
		if i == 3 {
			prompt = "bad"
		}
		wg.Go(func() {
			_, errs[i] = p.Generate(t.Context(), Request{Prompt: prompt, Steps: 3})
		})
	}
	wg.Wait()
	for i, err := range errs {
		var se *StageError
		switch {
		case i == 3 && (!errors.As(err, &se) || se.Stage != "denoise"):
			t.Errorf("bad request: %v, want a denoise StageError", err)
		case i != 3 && err != nil:
			t.Errorf("good request %d: %v", i, err)
		}
	}
}

func TestStagesOverlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const d = 20 * time.Millisecond
		u := &fakeUNet{delay: d / 4}
		p := newFake(t, u, d, Options{})
		reqs := make([]Request, 4)
		for i := range reqs {
			reqs[i] = Request{Prompt: fmt.Sprint(i), Steps: 4, GuidanceScale: new(1.0)}
		}
		res := generateAll(t, p, reqs)
		// some request's encoding ran while another's denoise or decode ran
		overlap := false
		for _, a := range res {
			for _, b := range res {
				if a == nil || b == nil || a == b {
					continue
				}
				as, ae := span(a.Metrics, "encode")
				bs, be := span(b.Metrics, "denoise")
				cs, ce := span(b.Metrics, "decode")
				if (as.Before(be) && bs.Before(ae)) || (as.Before(ce) && cs.Before(ae)) {
					overlap = true
				}
			}
		}
		if !overlap {
			t.Error("no stage of one request overlapped another request's stage")
		}
	})
}

// span returns a stage's start and end from request metrics.
func span(m RequestMetrics, stage string) (time.Time, time.Time) {
	es := m.Submitted.Add(m.EncodeQueue)
	ee := es.Add(m.Encode)
	ds := ee.Add(m.DenoiseQueue)
	de := ds.Add(m.Denoise)
	cs := de.Add(m.DecodeQueue)
	switch stage {
	case "encode":
		return es, ee
	case "denoise":
		return ds, de
	}
	return cs, cs.Add(m.Decode)
}

func TestDynamicBatchingSamePixels(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &fakeUNet{delay: time.Millisecond}
		alone := newFake(t, &fakeUNet{}, 0, Options{})
		batched := newFake(t, u, 0, Options{MaxBatch: 8, MaxBatchWait: 50 * time.Millisecond, DenoiseWorkers: 1})
		reqs := make([]Request, 5)
		for i := range reqs {
			reqs[i] = Request{Prompt: fmt.Sprintf("prompt %d", i), Steps: 6, Seed: int64(10 * i), Scheduler: "Euler a"}
		}
		got := generateAll(t, batched, reqs)
		shared := false
		for _, s := range u.sizes {
			shared = shared || s > 2
		}
		if !shared {
			t.Fatalf("no UNet call held more than one request: sizes %v", u.sizes)
		}
		for i, r := range reqs {
			want, err := alone.Generate(t.Context(), r)
			if err != nil {
				t.Fatal(err)
			}
			if got[i] == nil || !samePixels(want.Images[0], got[i].Images[0]) {
				t.Errorf("request %d: batched image differs from the same request alone", i)
			}
		}
	})
}

func TestCloseUnderLoad(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &fakeUNet{delay: 2 * time.Millisecond}
		p, err := New(fakeComponents(t, u, time.Millisecond), Options{DefaultWidth: 64, DefaultHeight: 64, EncodeWorkers: 2, DenoiseWorkers: 2, DecodeWorkers: 2})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		outcomes := map[string]int{}
		for i := range 20 {
			wg.Go(func() {
				_, err := p.Generate(context.Background(), Request{Prompt: fmt.Sprint(i), Steps: 20})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					outcomes["ok"]++
				case errors.Is(err, ErrClosed):
					outcomes["closed"]++
				default:
					outcomes[err.Error()]++
				}
			})
		}
		time.Sleep(30 * time.Millisecond)
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		if outcomes["ok"]+outcomes["closed"] != 20 {
			t.Errorf("outcomes %v: every request must complete or report ErrClosed", outcomes)
		}
		if _, err := p.Submit(t.Context(), Request{Prompt: "late"}); !errors.Is(err, ErrClosed) {
			t.Errorf("Submit after Close = %v, want ErrClosed", err)
		}
		if err := p.Close(); err != nil {
			t.Errorf("second Close = %v", err)
		}
		// synctest.Test fails if any goroutine of the pipeline is left
	})
}

func TestShutdownDrains(t *testing.T) {
	p, err := New(fakeComponents(t, &fakeUNet{delay: time.Millisecond}, 0), Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	var hs []*Handle
	for i := range 3 {
		h, err := p.Submit(t.Context(), Request{Prompt: fmt.Sprint(i), Steps: 5})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	if err := p.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if _, err := h.Wait(t.Context()); err != nil {
			t.Errorf("request drained by Shutdown failed: %v", err)
		}
	}
}

func TestSubmitBlocksAndHonoursContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		u := &fakeUNet{block: make(chan struct{})}
		p := newFake(t, u, 0, Options{})
		defer close(u.block)
		// one job in the UNet, one in the channel to denoise, one in the
		// encode worker waiting to hand it over: then intake is full
		for i := range 3 {
			if _, err := p.Submit(t.Context(), Request{Prompt: fmt.Sprint(i), Steps: 2}); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		if _, err := p.Submit(ctx, Request{Prompt: "probe", Steps: 2}); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Submit() into a full pipeline = %v, want context.DeadlineExceeded", err)
		}
	})
}

func TestImg2ImgFake(t *testing.T) {
	u := &fakeUNet{}
	p := newFake(t, u, 0, Options{})
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range img.Pix {
		img.Pix[i] = uint8(i)
	}
	for _, logic := range []struct {
		name  string
		req   Request
		calls int
	}{
		{"modern", Request{Prompt: "x", Steps: 10, InitImage: img, Strength: 0.5}, 5 + 1},       // PNDM: N·s steps plus its extra call
		{"full strength", Request{Prompt: "x", Steps: 10, InitImage: img, Strength: 1}, 10 + 1}, // the whole schedule
	} {
		t.Run(logic.name, func(t *testing.T) {
			res, err := p.Generate(t.Context(), logic.req)
			if err != nil {
				t.Fatal(err)
			}
			if res.Metrics.Steps != logic.calls {
				t.Errorf("%d UNet calls, want %d", res.Metrics.Steps, logic.calls)
			}
			if res.Request.Strength != logic.req.Strength || res.Request.InitImage == nil {
				t.Errorf("resolved request: strength %v, init image %v", res.Request.Strength, res.Request.InitImage != nil)
			}
		})
	}
}

func TestNaNDecoderReported(t *testing.T) {
	c := fakeComponents(t, &fakeUNet{}, 0)
	c.VAEDecoder = DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		s := lat.Shape()
		out := make([]float32, s[0]*3*s[2]*8*s[3]*8)
		out[5] = float32(math.NaN()) // what an overflowing fp16 VAE returns
		return tensor.New(tensor.WithShape(s[0], 3, s[2]*8, s[3]*8), tensor.WithBacking(out)), nil
	})
	p, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	_, err = p.Generate(t.Context(), Request{Prompt: "x", Steps: 2})
	var se *StageError
	if !errors.Is(err, ErrNaN) || !errors.As(err, &se) || se.Stage != "decode" {
		t.Errorf("Generate() = %v, want ErrNaN from the decode stage", err)
	}
	// the pipeline keeps serving
	c2 := p.Metrics()
	if c2.Failed != 1 {
		t.Errorf("metrics %+v", c2)
	}
}

func TestCancelWhileQueued(t *testing.T) {
	u := &fakeUNet{block: make(chan struct{})}
	p := newFake(t, u, 0, Options{})
	defer close(u.block)
	if _, err := p.Submit(t.Context(), Request{Prompt: "first", Steps: 2}); err != nil { // holds the UNet
		t.Fatal(err)
	}
	h, err := p.Submit(t.Context(), Request{Prompt: "queued", Steps: 2})
	if err != nil {
		t.Fatal(err)
	}
	h.Cancel()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := h.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Wait() on a request canceled in the queue = %v, want context.Canceled at once", err)
	}
}
