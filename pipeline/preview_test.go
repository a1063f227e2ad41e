package pipeline

import (
	"context"
	"image"
	"sync/atomic"
	"testing"
	"time"

	"gorgonia.org/tensor"
)

// TestPreviewDecoder checks that a PreviewDecoder's previews arrive in the
// progress events of a run (full-size, every PreviewEvery steps), that a
// slow one never holds up the UNet (its renders are dropped, not queued),
// and that the cheap map stands in until the first render.
func TestPreviewDecoder(t *testing.T) {
	var calls atomic.Int32
	release := make(chan struct{})
	c := fakeComponents(t, &fakeUNet{delay: 2 * time.Millisecond}, 0)
	c.PreviewDecoder = DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		if calls.Add(1) == 2 { // the second render waits until the run has gone on
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return fakeDecoder(0).Decode(ctx, lat)
	})
	p, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64, PreviewEvery: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	h, err := p.Submit(t.Context(), Request{Prompt: "a cat", Steps: 20, Seed: 1, Preview: true, Scheduler: "Euler"})
	if err != nil {
		t.Fatal(err)
	}
	var full, cheap, events int
	for ev := range h.Progress() {
		events++
		if ev.Step == 12 {
			close(release) // the UNet got here with the second render still blocked
		}
		if ev.Preview == nil {
			t.Fatalf("step %d: no preview", ev.Step)
		}
		switch b := ev.Preview.Bounds(); {
		case b.Dx() == 64 && b.Dy() == 64:
			full++
		case b.Dx() == 8 && b.Dy() == 8:
			cheap++
		default:
			t.Fatalf("step %d: preview of %v", ev.Step, b)
		}
	}
	if _, err := h.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	if events != 20 || full == 0 || cheap == 0 {
		t.Errorf("%d events: %d decoded previews, %d cheap ones; want 20 with both", events, full, cheap)
	}
	// renders every 2 steps but the last, minus those dropped while one
	// was blocked
	if n := calls.Load(); n < 2 || n > 9 {
		t.Errorf("%d preview renders, want 2 to 9", n)
	}
}

// TestFastDecode checks that Request.FastDecode decodes with the
// FastDecoder, on the latents not divided by the scaling factor, and that
// a model without one refuses it.
func TestFastDecode(t *testing.T) {
	c := fakeComponents(t, &fakeUNet{}, 0)
	var got atomic.Pointer[[]float32]
	c.FastDecoder = DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		d := append([]float32(nil), lat.Data().([]float32)...)
		got.Store(&d)
		return fakeDecoder(0).Decode(ctx, lat)
	})
	var vae atomic.Pointer[[]float32]
	dec := c.VAEDecoder
	c.VAEDecoder = DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		d := append([]float32(nil), lat.Data().([]float32)...)
		vae.Store(&d)
		return dec.Decode(ctx, lat)
	})
	p, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	req := Request{Prompt: "a cat", Steps: 4, Seed: 3, FastDecode: true}
	res, err := p.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if b := res.Images[0].Bounds(); b != image.Rect(0, 0, 64, 64) {
		t.Errorf("fast-decoded image %v, want 64×64", b)
	}
	if got.Load() == nil || vae.Load() != nil {
		t.Fatalf("fast decoder called: %v, VAE called: %v; want only the fast one", got.Load() != nil, vae.Load() != nil)
	}
	req.FastDecode = false
	if _, err := p.Generate(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	fast, slow := *got.Load(), *vae.Load()
	for i := range fast {
		if d := slow[i]*0.18215 - fast[i]; d > 1e-5 || d < -1e-5 {
			t.Fatalf("latent %d: fast decoder got %g, VAE %g (÷ 0.18215): want the undivided latents", i, fast[i], slow[i])
		}
	}

	c.FastDecoder = nil
	q, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if _, err := q.Submit(t.Context(), Request{Prompt: "a cat", Steps: 2, FastDecode: true}); err == nil {
		t.Error("FastDecode without a fast decoder was accepted")
	}
}
