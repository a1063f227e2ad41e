package sd

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
)

func openDefault(t *testing.T, opts ...Option) *Model {
	t.Helper()
	testenv.RequireORT(t)
	dir, err := models.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(t.Context(), dir, append([]Option{WithThreads(UNet, 1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestMemoryAdmission is #16 defect 2 in the engine: 1024×1024 on the 8 MB
// default model took 17.7 GB and the kernel killed the process. With a
// small budget, a request that cannot fit is refused at once, naming the
// budget and the largest size that fits, which is then admitted.
func TestMemoryAdmission(t *testing.T) {
	const budget = 300 << 20
	m := openDefault(t, WithMemoryBudget(budget))
	if b, used := m.MemoryBudget(); b != budget || used != 0 {
		t.Fatalf("MemoryBudget %d %d", b, used)
	}
	e, err := m.EstimateMemory(Request{Width: 1024, Height: 1024})
	if err != nil {
		t.Fatal(err)
	}
	// the attention scores: 2 rows × 4 heads × 16384² floats, twice
	if e.UNet < 16<<30 || e.Total() > 20<<30 {
		t.Errorf("1024² estimate %+v: want about the 17.7 GB the issue measured", e)
	}
	_, err = m.Submit(t.Context(), Request{Prompt: "a", Steps: 1, Width: 1024, Height: 1024})
	var me *MemoryError
	if !errors.As(err, &me) || !errors.Is(err, ErrMemory) {
		t.Fatalf("1024² on a 300 MiB budget: %v, want a *MemoryError", err)
	}
	if !strings.Contains(me.Error(), "300 MiB") || !strings.Contains(me.Error(), "largest size that fits") || me.FitWidth == 0 || me.FitWidth != me.FitHeight {
		t.Errorf("message %q, fit %dx%d", me, me.FitWidth, me.FitHeight)
	}
	if w, h := m.LargestSize(Request{}); w != me.FitWidth || h != me.FitHeight {
		t.Errorf("LargestSize %dx%d, the error says %dx%d", w, h, me.FitWidth, me.FitHeight)
	}
	fit, _ := m.EstimateMemory(Request{Width: me.FitWidth, Height: me.FitHeight})
	over, _ := m.EstimateMemory(Request{Width: me.FitWidth + 8, Height: me.FitHeight + 8})
	if fit.Total() > budget || over.Total() <= budget {
		t.Errorf("fit %dx%d: %d and %d bytes around a budget of %d", me.FitWidth, me.FitHeight, fit.Total(), over.Total(), budget)
	}
	res, err := m.Generate(t.Context(), Request{Prompt: "a", Steps: 1, Width: me.FitWidth, Height: me.FitHeight})
	if err != nil || res.Images[0].Bounds().Dx() != me.FitWidth {
		t.Errorf("the largest size that fits: %v", err)
	}
	// a batch that does not fit says how many images of its size do
	_, err = m.Submit(t.Context(), Request{Prompt: "a", Steps: 1, Width: 256, Height: 256, ImagesPerPrompt: 64})
	if !errors.As(err, &me) || me.FitImages < 1 || me.FitImages >= 64 || !strings.Contains(err.Error(), "image(s) of that size fit") {
		t.Errorf("64 images of 256²: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, used := m.MemoryBudget()
		if used == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d bytes still held after the requests", used, b)
		}
	}
}

// TestMemoryAdmissionWaits: requests that fit alone but not together run
// one after the other, and the budget is never exceeded.
func TestMemoryAdmissionWaits(t *testing.T) {
	probe := openDefault(t, WithMemoryBudget(1<<40))
	e, _ := probe.EstimateMemory(Request{Prompt: "a", Width: 192, Height: 192})
	m := openDefault(t, WithMemoryBudget(e.Total()*3/2)) // one at a time
	var wg sync.WaitGroup
	var mu sync.Mutex
	peak := int64(0)
	stop := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
				_, used := m.MemoryBudget()
				mu.Lock()
				peak = max(peak, used)
				mu.Unlock()
			}
		}
	})
	for i := range 3 {
		wg.Go(func() {
			if _, err := m.Generate(t.Context(), Request{Prompt: "a", Steps: 3, Width: 192, Height: 192, Seed: int64(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	close(stop)
	sampler.Wait()
	if b, _ := m.MemoryBudget(); peak > b || peak == 0 {
		t.Errorf("peak admitted %d of a budget of %d", peak, b)
	}
}

// TestPromptCost is #16 defect 7: "a BREAK " × 1000 took 9.6 s and over a
// GB; 4,000 nested parentheses gave a non-finite image (a 500).
func TestPromptCost(t *testing.T) {
	m := openDefault(t, WithMaxPromptChunks(8))
	for _, tc := range []struct {
		name, prompt, negative string
		field, msg             string
	}{
		{"breaks", strings.Repeat("a BREAK ", 1000), "", "Prompt", "1000 chunks of 75 tokens, more than the limit of 8"},
		{"long negative", "a", strings.Repeat("word ", 700), "NegativePrompt", "more than the limit of 8"},
		{"nested parentheses", strings.Repeat("(", 4000) + "x" + strings.Repeat(")", 4000), "", "Prompt", "outside [-10, 10]"},
		{"nested unclosed", strings.Repeat("(", 30) + "x", "", "Prompt", "outside [-10, 10]"},
		{"large weight", "(x:50)", "", "Prompt", "outside"},
		{"negative weight", "a", "(x:-50)", "NegativePrompt", "outside"},
	} {
		_, err := m.Submit(t.Context(), Request{Prompt: tc.prompt, NegativePrompt: tc.negative, Steps: 1})
		var re *RequestError
		if !errors.As(err, &re) || re.Field != tc.field || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v, want a RequestError on %s saying %q", tc.name, err, tc.field, tc.msg)
		}
	}
	for _, p := range []string{"(((a red circle)))", "(a:1.5) [b] BREAK c", "(x:-2)", strings.Repeat("a, ", 200)} {
		if _, err := m.Generate(t.Context(), Request{Prompt: p, Steps: 1}); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	if _, err := Open(t.Context(), "nowhere", WithMemoryBudget(-1), WithMaxPromptChunks(-2)); err == nil ||
		!strings.Contains(err.Error(), "WithMemoryBudget") || !strings.Contains(err.Error(), "WithMaxPromptChunks") {
		t.Errorf("negative limits: %v", err)
	}
}
