package pipeline

import (
	"testing"
	"time"
)

// TestInterrupt: an interrupted request stops denoising and returns its
// partial image; the request batched with it runs all its steps.
func TestInterrupt(t *testing.T) {
	u := &fakeUNet{delay: 2 * time.Millisecond}
	p := newFake(t, u, 0, Options{MaxBatch: 4, MaxBatchWait: 50 * time.Millisecond})
	h, err := p.Submit(t.Context(), Request{Prompt: "long", Steps: 400, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	other, err := p.Submit(t.Context(), Request{Prompt: "other", Steps: 400, Seed: 2})
	if err != nil {
		t.Fatal(err)
	}
	for ev := range h.Progress() {
		if ev.Step == 5 {
			h.Interrupt()
			break
		}
	}
	res, err := h.Wait(t.Context())
	if err != nil {
		t.Fatalf("interrupted request: %v, want its partial result", err)
	}
	if n := res.Metrics.Steps; n < 5 || n >= 400 || len(res.Images) != 1 {
		t.Errorf("interrupted after %d steps with %d images", n, len(res.Images))
	}
	ores, err := other.Wait(t.Context())
	if err != nil || ores.Metrics.Steps < 400 {
		t.Errorf("the request batched beside it: %v, %d steps", err, ores.Metrics.Steps)
	}
	h.Interrupt() // after the end: nothing
	if m := p.Metrics(); m.Completed != 2 || m.Failed != 0 {
		t.Errorf("metrics %+v", m)
	}
}
