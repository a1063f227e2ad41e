package sd

import (
	"context"
	"maps"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
)

// TestMemorySignature reads the default model's components: the UNet's
// attention layers and heads, the VAE's levels, from the files alone.
func TestMemorySignature(t *testing.T) {
	dir, err := models.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	sig := map[string]*memSignature{}
	for _, c := range []string{"text_encoder", "unet", "vae_decoder", "vae_encoder"} {
		st, err := onnxpb.ReadStructure(filepath.Join(dir, c, "model.onnx"))
		if err != nil {
			t.Fatal(err)
		}
		sig[c] = analyze(st)
	}
	u := sig["unet"]
	// two levels (64 channels), a transformer block at each level of the
	// down path, the middle and the up path: self and cross attention,
	// 4 heads each
	if len(u.self) != 5 || len(u.cross) != 5 {
		t.Fatalf("unet attention: self %v cross %v, want 5 each", u.self, u.cross)
	}
	levels := map[int]int{}
	for _, a := range u.self {
		if a.heads != 4 {
			t.Errorf("self-attention %+v: want 4 heads", a)
		}
		levels[a.level]++
	}
	if levels[0] != 2 || levels[1] != 3 {
		t.Errorf("self-attention levels %v, want 2 at the latent size and 3 at half", levels)
	}
	if u.width[0] < 64 || u.width[1] < 64 {
		t.Errorf("unet widths %v", u.width)
	}
	if d := sig["vae_decoder"]; d.width[-3] == 0 || d.width[0] == 0 || len(d.self) != 0 {
		t.Errorf("vae decoder: widths %v (want levels 0 to -3: it upsamples 8×), attention %v", d.width, d.self)
	}
	if e := sig["vae_encoder"]; e.width[3] == 0 || e.width[0] == 0 {
		t.Errorf("vae encoder: widths %v (want levels 0 to 3)", e.width)
	}
	if te := sig["text_encoder"]; len(te.self) == 0 || len(te.cross) != 0 {
		t.Errorf("text encoder attention: self %v cross %v", te.self, te.cross)
	}

	// attention memory grows with the square of the latent area: 4× the
	// area is about 16× the UNet's need
	n256 := u.need(callShape{rows: 2, h: 32, w: 32, keys: 77, visual: true})
	n512 := u.need(callShape{rows: 2, h: 64, w: 64, keys: 77, visual: true})
	if r := float64(n512) / float64(n256); r < 14 || r > 16.1 {
		t.Errorf("unet need 512²/256² = %.1f, want about 16", r)
	}
	if n := u.need(callShape{rows: 4, h: 64, w: 64, keys: 77, visual: true}); n != 2*n512 {
		t.Errorf("twice the rows: %d, want %d", n, 2*n512)
	}
	// fused attention kernels keep no score tensor: linear in the area
	f := &memSignature{elem: 4, fused: u.self, width: u.width}
	if r := float64(f.need(callShape{rows: 1, h: 64, w: 64, visual: true})) / float64(f.need(callShape{rows: 1, h: 32, w: 32, visual: true})); r != 4 {
		t.Errorf("fused attention: 512²/256² = %.1f, want 4", r)
	}
}

func TestCallShapeTokens(t *testing.T) {
	c := callShape{h: 9, w: 12, visual: true}
	for _, tc := range []struct {
		level int
		want  int64
	}{{0, 108}, {1, 5 * 6}, {2, 3 * 3}, {-1, 18 * 24}, {-3, 72 * 96}} {
		if got := c.tokens(tc.level); got != tc.want {
			t.Errorf("level %d: %d tokens, want %d", tc.level, got, tc.want)
		}
	}
	if got := (callShape{h: 77, w: 1}).tokens(3); got != 77 {
		t.Errorf("a sequence has %d tokens at level 3, want 77", got)
	}
}

// TestMemoryGate: requests are admitted first come, first served while
// they fit; a waiter that gives up leaves the line.
func TestMemoryGate(t *testing.T) {
	g := &memoryGate{budget: 10}
	ctx := context.Background()
	r1, err := g.acquire(ctx, memDemand{held: 6})
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 3)
	go func() {
		r, err := g.acquire(ctx, memDemand{held: 6})
		if err == nil {
			got <- "second"
			time.Sleep(10 * time.Millisecond)
			r()
		}
	}()
	waitGate(t, g, 1)
	go func() { // fits beside the first, but waits behind the second: no starving
		r, err := g.acquire(ctx, memDemand{held: 4})
		if err == nil {
			got <- "third"
			r()
		}
	}()
	waitGate(t, g, 2)
	cctx, cancel := context.WithCancel(ctx)
	gaveUp := make(chan error, 1)
	go func() { _, err := g.acquire(cctx, memDemand{held: 1}); gaveUp <- err }()
	waitGate(t, g, 3)
	cancel()
	if err := <-gaveUp; err != context.Canceled {
		t.Errorf("a waiter that gave up: %v", err)
	}
	select {
	case s := <-got:
		t.Fatalf("%s admitted before the first released", s)
	case <-time.After(20 * time.Millisecond):
	}
	r1()
	r1() // idempotent
	// the second (6) and the third (4) fit together now
	if a, b := <-got, <-got; a == b {
		t.Errorf("admitted %s and %s", a, b)
	}
	waitFor := time.Now().Add(5 * time.Second)
	for g.inUse() != 0 && time.Now().Before(waitFor) {
		time.Sleep(time.Millisecond)
	}
	if g.inUse() != 0 {
		t.Errorf("%d bytes still admitted", g.inUse())
	}
}

func waitGate(t *testing.T, g *memoryGate, waiters int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		g.mu.Lock()
		n := len(g.waiters)
		g.mu.Unlock()
		if n == waiters {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d waiters, want %d", n, waiters)
		}
	}
}

func TestMachineMemory(t *testing.T) {
	if n := machineMemory(); n <= 0 {
		t.Skipf("no memory figure on this machine (%d): the budget then needs WithMemoryBudget", n)
	}
	if a := memAvailable(); a <= 0 {
		t.Errorf("MemAvailable %d", a)
	}
}

// TestMemorySignatureInt8 checks that an int8 UNet (QLinearConv,
// DynamicQuantizeMatMul) has the memory signature of its float32 graph:
// the same widest activation at every resolution level and the same
// attention layers, so that admission counts an int8 request as it counts
// a float32 one.
func TestMemorySignatureInt8(t *testing.T) {
	testenv.RequireORT(t)
	cache := t.TempDir()
	m, err := Open(t.Context(), testenv.TinyReferenceModel(t), WithThreads(UNet, 1), WithoutVAEEncoder(), WithInt8(Int8{}), WithRewriteCache(cache))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if r := m.Load().Rewrites[UNet]; !strings.Contains(r, "conv×") {
		t.Fatalf("UNet rewrites %q: want quantized convolutions", r)
	}
	var built []string
	built, err = filepath.Glob(filepath.Join(cache, "built-*", "model.onnx"))
	if err != nil || len(built) != 1 {
		t.Fatalf("int8 entries in the cache: %v %v, want one", built, err)
	}
	read := func(path string) *memSignature {
		st, err := onnxpb.ReadStructure(path)
		if err != nil {
			t.Fatal(err)
		}
		return analyze(st)
	}
	q := read(built[0])
	f := read(filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx"))
	if q.ops["QLinearConv"] == 0 {
		t.Fatalf("the int8 UNet has no QLinearConv: %v", q.ops)
	}
	if !maps.Equal(q.width, f.width) {
		t.Errorf("int8 UNet widths %v, float32 %v", q.width, f.width)
	}
	if nq, nf := len(q.self)+len(q.cross)+len(q.fused), len(f.self)+len(f.cross)+len(f.fused); nq != nf {
		t.Errorf("int8 UNet: %d attention layers, float32 %d", nq, nf)
	}
	c := callShape{rows: 2, h: 8, w: 8, keys: 77, visual: true}
	if q.need(c) < f.need(c)/2 {
		t.Errorf("int8 UNet needs %d bytes a call, float32 %d: want the same activations", q.need(c), f.need(c))
	}
}
