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

// TestMemoryOverlap checks the arithmetic of what requests hold at once
// (memory.go), on the figures of a 1024² SDXL request with int8 MatMul,
// offloaded text encoders and 512-pixel VAE tiles (BENCHMARKS.md, in MiB):
// the encoders' weights and arena are freed before the UNet runs, so one
// request holds the larger of its text encoding and its VAE decode beside
// the UNet's arena, not their sum (4312 MiB, which an 8 GiB container's
// budget refused); requests in flight share one load of the weights, and
// their bound is never below what any mix of their stages holds.
func TestMemoryOverlap(t *testing.T) {
	const mb = 1 << 20
	var offload, arenaless componentSet
	offload.add(TextEncoder)
	offload.add(VAEDecoder) // the default: the VAE runs without its arena
	arenaless = offload
	arenaless.add(UNet) // SessionOptions{MemoryArena: Off} on the UNet
	xl := MemoryEstimate{TextEncoder: 48 * mb, TextWeights: 3100 * mb, UNet: 360 * mb, VAEDecoder: 768 * mb, Buffers: 36 * mb, VAETile: 512}
	for _, tc := range []struct {
		name  string
		freed componentSet
		want  int64
	}{
		{"all held (the sum)", 0, (48 + 3100 + 360 + 768 + 36) * mb},
		{"offloaded", offload, (360 + 36 + max(48+3100, 768)) * mb},
		{"offloaded, UNet without arena", arenaless, (36 + max(48+3100, 360, 768)) * mb},
	} {
		e := xl
		e.freed = tc.freed
		if got := e.Total(); got != tc.want {
			t.Errorf("%s: Total %d MiB, want %d", tc.name, got/mb, tc.want/mb)
		}
		if got := need([]*memDemand{new(e.demand())}); got != e.Total() {
			t.Errorf("%s: the gate counts one request as %d MiB, its Total is %d", tc.name, got/mb, e.Total()/mb)
		}
	}

	// Several in flight: the bound against every mix of stages, each
	// request in one stage (or between stages), the weights loaded while
	// any of them encodes.
	small := xl
	small.TextEncoder, small.UNet, small.VAEDecoder, small.Buffers = 48*mb, 90*mb, 200*mb, 9*mb // a 512² request
	for _, freed := range []componentSet{0, offload, arenaless} {
		var es []MemoryEstimate
		for _, e := range []MemoryEstimate{xl, small, xl} {
			e.freed = freed
			es = append(es, e)
			var ds []*memDemand
			for _, e := range es {
				ds = append(ds, new(e.demand()))
			}
			bound, worst := need(ds), worstMix(es)
			if bound < worst {
				t.Errorf("freed %b, %d in flight: the gate counts %d MiB, a mix of their stages holds %d", freed, len(es), bound/mb, worst/mb)
			}
			var sum int64
			for _, e := range es {
				sum += e.Total()
			}
			if freed == 0 && bound != sum {
				t.Errorf("all held, %d in flight: %d MiB, want the sum of the Totals, %d", len(es), bound/mb, sum/mb)
			}
			if freed != 0 && len(es) > 1 && bound >= sum {
				t.Errorf("freed %b, %d in flight: %d MiB, not below the sum of the Totals (%d): the weights counted per request", freed, len(es), bound/mb, sum/mb)
			}
		}
	}

	// The gate admits on the bound: two 1024² offloaded requests fit
	// where the sum of their Totals would not.
	e := xl
	e.freed = offload
	two := need([]*memDemand{new(e.demand()), new(e.demand())})
	if two >= 2*e.Total() {
		t.Fatalf("two in flight: %d MiB, want less than twice one (%d)", two/mb, e.Total()/mb)
	}
	g := &memoryGate{budget: two}
	r1, err := g.acquire(t.Context(), e.demand())
	if err != nil {
		t.Fatal(err)
	}
	r2, err := g.acquire(t.Context(), e.demand()) // fits at once, or this waits for ever
	if err != nil {
		t.Fatal(err)
	}
	if got := g.inUse(); got != two {
		t.Errorf("in use %d MiB, want %d", got/mb, two/mb)
	}
	r1()
	r2()
	if got := g.inUse(); got != 0 {
		t.Errorf("in use %d MiB after both released", got/mb)
	}
}

// worstMix returns the most that requests es hold at once over every
// assignment of one stage to each: nothing freed, the text encoding (its
// arena, and the weights, loaded once), or one of the other freed parts.
func worstMix(es []MemoryEstimate) int64 {
	var worst int64
	var walk func(i int, sum int64, encoding bool)
	walk = func(i int, sum int64, encoding bool) {
		if i == len(es) {
			if encoding {
				for _, e := range es {
					if e.freed.has(TextEncoder) {
						sum += e.TextWeights // loaded once, whoever encodes
						break
					}
				}
			}
			worst = max(worst, sum)
			return
		}
		e := es[i]
		held := e.Buffers
		var freed []int64
		for c, n := range map[Component]int64{TextEncoder: e.TextEncoder, UNet: e.UNet, VAEDecoder: e.VAEDecoder, VAEEncoder: e.VAEEncoder} {
			switch {
			case !e.freed.has(c):
				held += n
			case c != TextEncoder:
				freed = append(freed, n)
			}
		}
		if !e.freed.has(TextEncoder) {
			held += e.TextWeights
		}
		walk(i+1, sum+held, encoding)
		if e.freed.has(TextEncoder) {
			walk(i+1, sum+held+e.TextEncoder, true)
		}
		for _, n := range freed {
			walk(i+1, sum+held+n, encoding)
		}
	}
	walk(0, 0, false)
	return worst
}
