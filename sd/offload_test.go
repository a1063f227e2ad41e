package sd

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// openTinyXL opens the tiny SDXL reference model.
func openTinyXL(t *testing.T, opts ...Option) *Model {
	t.Helper()
	testenv.RequireORT(t)
	dir := filepath.Join(testenv.SharedDir(t), "reference", "tiny-sdxl", "model")
	m, err := Open(t.Context(), dir, append([]Option{WithThreads(UNet, 1), WithThreads(TextEncoder, 1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// TestOffloadTextEncoders: with the text encoders offloaded, SDXL (both
// encoders, pooled embeddings) and SD 1.x give the same image as with
// them loaded; no encoder session is open between requests, each request
// opens them once, and admission counts their weights.
func TestOffloadTextEncoders(t *testing.T) {
	for _, tc := range []struct {
		name string
		open func(*testing.T, ...Option) *Model
	}{{"sdxl", openTinyXL}, {"sd", openDefault}} {
		t.Run(tc.name, func(t *testing.T) {
			req := Request{Prompt: "a lighthouse at dusk", NegativePrompt: "blurry", Steps: 2, Seed: 5, Width: 64, Height: 64}
			loaded := tc.open(t, WithMemoryBudget(1<<40))
			off := tc.open(t, WithMemoryBudget(1<<40), WithOffload(Offload{TextEncoders: true}))
			o := off.f.offText
			if o == nil {
				t.Fatal("WithOffload: no offloaded text encoding")
			}
			if o.te1 != nil || o.weights <= 0 {
				t.Fatalf("after Open: encoder open %v, weights %d; want closed, and their bytes known", o.te1 != nil, o.weights)
			}
			if xl := tc.name == "sdxl"; xl != (o.sig2 != nil) || xl && len(o.hidden) != 2 {
				t.Fatalf("sdxl %v: second encoder %v, hidden parts %v", xl, o.sig2 != nil, o.hidden)
			}
			want, err := loaded.Generate(t.Context(), req)
			if err != nil {
				t.Fatal(err)
			}
			for i := 1; i <= 2; i++ {
				got, err := off.Generate(t.Context(), req)
				if err != nil {
					t.Fatalf("offloaded, request %d: %v", i, err)
				}
				if !bytes.Equal(pixelsOf(t, got), pixelsOf(t, want)) {
					t.Errorf("request %d: offloaded text encoders give another image", i)
				}
				if o.te1 != nil || o.te2 != nil || o.users != 0 || o.opens != i {
					t.Errorf("after request %d: open %v/%v, users %d, opened %d times; want closed, opened once per request",
						i, o.te1 != nil, o.te2 != nil, o.users, o.opens)
				}
			}
			el, _ := loaded.EstimateMemory(req)
			eo, _ := off.EstimateMemory(req)
			if el.TextWeights != 0 || eo.TextWeights != o.weights || eo.TextEncoder != el.TextEncoder || eo.UNet != el.UNet || eo.VAEDecoder != el.VAEDecoder {
				t.Errorf("estimates: loaded %+v, offloaded %+v; want the text encoders' %d bytes of weights added", el, eo, o.weights)
			}
			// the encoding's weights and arena are freed before the UNet runs:
			// counted beside the UNet's arena, instead of the VAE's decode
			if want := el.UNet + el.Buffers + max(el.TextEncoder+o.weights, el.VAEDecoder); eo.Total() != want {
				t.Errorf("offloaded Total %d, want %d (UNet %d + buffers %d + the larger of the text encoding %d and the decode %d)",
					eo.Total(), want, el.UNet, el.Buffers, el.TextEncoder+o.weights, el.VAEDecoder)
			}
		})
	}
}

// TestOffloadAdmission: with the text encoders offloaded, a request is
// admitted on the most it holds at once (its text encoding, weights
// included, or its VAE decode, beside the UNet's arena), not on the sum of
// every part, which refused a 1024² SDXL image at 8 GiB (#22); a budget
// one byte below that is refused with a *MemoryError naming the budget,
// before anything runs.
func TestOffloadAdmission(t *testing.T) {
	req := Request{Prompt: "a lighthouse", Steps: 2, Seed: 1, Width: 64, Height: 64}
	probe := openTinyXL(t, WithMemoryBudget(1<<40), WithTiledVAE(Off, 0), WithOffload(Offload{TextEncoders: true}))
	e, err := probe.EstimateMemory(req)
	if err != nil {
		t.Fatal(err)
	}
	sum := e.TextEncoder + e.TextWeights + e.UNet + e.VAEDecoder + e.VAEEncoder + e.Buffers
	if e.TextWeights <= 0 || e.Total() >= sum {
		t.Fatalf("offloaded estimate %+v: Total %d, want it below the sum of the parts (%d)", e, e.Total(), sum)
	}
	budget := e.Total()
	m := openTinyXL(t, WithMemoryBudget(budget), WithTiledVAE(Off, 0), WithOffload(Offload{TextEncoders: true}))
	if _, err := m.Generate(t.Context(), req); err != nil {
		t.Fatalf("offloaded on a budget of %d (its Total; the sum of its parts is %d): %v, want it admitted", budget, sum, err)
	}
	budget--
	m = openTinyXL(t, WithMemoryBudget(budget), WithTiledVAE(Off, 0), WithOffload(Offload{TextEncoders: true}))
	_, err = m.Submit(t.Context(), req)
	var me *MemoryError
	if !errors.As(err, &me) || me.Budget != budget || me.Need != e.Total() || !strings.Contains(err.Error(), "memory budget of "+gib(budget)) {
		t.Fatalf("offloaded on a budget of %d (its Total - 1): %v, want a *MemoryError naming the budget", budget, err)
	}
	if m.f.offText.opens != 0 {
		t.Errorf("a refused request opened the text encoders %d times", m.f.offText.opens)
	}
}
