package pipeline

import (
	"context"
	"slices"
	"sync"
	"testing"

	"gorgonia.org/tensor"
)

// fakePooledEncoder is fakeEncoder with a pooled embedding per row: the
// row's first content id and, for the second tokenizer's ids, 1000 more
// than their sum, so a test sees which ids it got.
type fakePooledEncoder struct {
	Encoder
}

func (e *fakePooledEncoder) EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (*tensor.Dense, *tensor.Dense, error) {
	h, err := e.Encode(ctx, ids, batch)
	if err != nil {
		return nil, nil, err
	}
	seq := len(ids) / batch
	p := make([]float32, 2*batch)
	for r := range batch {
		p[2*r] = float32(ids[r*seq+1])
		if ids2 != nil {
			var s int32
			for _, id := range ids2[r*seq : (r+1)*seq] {
				s += id
			}
			p[2*r+1] = 1000 + float32(s)
		}
	}
	return h, tensor.New(tensor.WithShape(batch, 2), tensor.WithBacking(p)), nil
}

// addedUNet is fakeUNet that records each call's added conditioning and
// text embeddings.
type addedUNet struct {
	fakeUNet
	mu             sync.Mutex
	pooled, timeID [][]float32
	cond           [][]float32
}

func (u *addedUNet) PredictAdded(ctx context.Context, sample *tensor.Dense, ts []float64, cond, textEmbeds, timeIDs *tensor.Dense) (*tensor.Dense, error) {
	u.mu.Lock()
	u.pooled = append(u.pooled, slices.Clone(textEmbeds.Data().([]float32)))
	u.timeID = append(u.timeID, slices.Clone(timeIDs.Data().([]float32)))
	u.cond = append(u.cond, slices.Clone(cond.Data().([]float32)))
	u.mu.Unlock()
	if s := timeIDs.Shape(); s[0] != sample.Shape()[0] || s[1] != 6 {
		panic("time ids shape")
	}
	return u.Predict(ctx, sample, ts, cond)
}

// fakeTokenizer2 is fakeTokenizer padded with 0 after the first EOS-like
// id 2, as SDXL's tokenizer_2 pads with "!".
type fakeTokenizer2 struct{}

func (fakeTokenizer2) Encode(text string) []int32 {
	ids := fakeTokenizer{}.Encode(text)
	if i := slices.Index(ids, 2); i >= 0 {
		for k := i + 1; k < len(ids); k++ {
			ids[k] = 0
		}
	}
	return ids
}

// addedPipeline is a pipeline of fakes for an SDXL-style model (pooled
// embeddings, time ids, a second tokenizer, zeros for an empty negative
// prompt) making width×height images by default, closed when the test
// ends; its UNet, which records what it was given; and its components.
func addedPipeline(t *testing.T, width, height int) (*Pipeline, *addedUNet, Components) {
	t.Helper()
	u := &addedUNet{}
	c := fakeComponents(t, &u.fakeUNet, 0)
	c.TextEncoder, c.UNet, c.Tokenizer2 = &fakePooledEncoder{Encoder: fakeEncoder(0)}, u, fakeTokenizer2{}
	c.Added, c.ZeroEmptyNegative = true, true
	p, err := New(c, Options{DefaultWidth: width, DefaultHeight: height})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, u, c
}

// TestAddedConditioning checks what an SDXL-style model's UNet gets: the
// pooled embeddings and time ids in the rows' order ([uncond of each
// image, cond of each image]), diffusers' default time ids and explicit
// ones, zeros for an empty negative prompt (ZeroEmptyNegative), and the
// second tokenizer's ids for literal prompts.
func TestAddedConditioning(t *testing.T) {
	p, u, c := addedPipeline(t, 64, 48)

	res, err := p.Generate(t.Context(), Request{Prompt: "b", NegativePrompt: "a", Steps: 2, Seed: 1, ImagesPerPrompt: 2, LiteralPrompt: true,
		OriginalWidth: 1024, OriginalHeight: 768, CropTop: 3, CropLeft: 4})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Request; r.TargetWidth != 64 || r.TargetHeight != 48 {
		t.Errorf("resolved target size %dx%d, want the image's 64x48", r.TargetWidth, r.TargetHeight)
	}
	if len(u.pooled) < 2 {
		t.Fatalf("%d UNet calls, want 2 or more", len(u.pooled))
	}
	ids2 := func(s string) float32 {
		var n int32
		for _, id := range (fakeTokenizer2{}).Encode(s) {
			n += id
		}
		return 1000 + float32(n)
	}
	a, b := float32('a'+3), float32('b'+3)
	wantPooled := []float32{a, ids2("a"), a, ids2("a"), b, ids2("b"), b, ids2("b")}
	for _, got := range u.pooled {
		if !slices.Equal(got, wantPooled) {
			t.Errorf("text_embeds %v, want %v (uncond rows, then cond rows) at every step", got, wantPooled)
		}
	}
	row := []float32{768, 1024, 3, 4, 48, 64}
	if want := slices.Concat(row, row, row, row); !slices.Equal(u.timeID[0], want) {
		t.Errorf("time_ids %v, want %v on every row", u.timeID[0], want)
	}

	// an empty negative prompt gives zeros; default time ids (the fake
	// tokenizer knows no A1111 syntax: the prompts are literal)
	u.pooled, u.timeID, u.cond = nil, nil, nil
	if _, err := p.Generate(t.Context(), Request{Prompt: "b", Steps: 1, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if want := []float32{0, 0, b, ids2("b")}; !slices.Equal(u.pooled[0], want) {
		t.Errorf("text_embeds %v, want zeros for the empty negative prompt, then %v", u.pooled[0], want)
	}
	cond := u.cond[0]
	if half := len(cond) / 2; slices.ContainsFunc(cond[:half], func(v float32) bool { return v != 0 }) || !slices.ContainsFunc(cond[half:], func(v float32) bool { return v != 0 }) {
		t.Error("encoder_hidden_states: want zeros for the empty negative prompt and the prompt's states")
	}
	if want := []float32{48, 64, 0, 0, 48, 64}; !slices.Equal(u.timeID[0][:6], want) {
		t.Errorf("default time_ids %v, want %v", u.timeID[0][:6], want)
	}

	// without ZeroEmptyNegative the empty prompt is encoded
	c.ZeroEmptyNegative = false
	p2, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	u.pooled = nil
	if _, err := p2.Generate(t.Context(), Request{Prompt: "b", Steps: 1, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	if u.pooled[0][0] == 0 {
		t.Errorf("text_embeds %v: the empty negative prompt was zeroed", u.pooled[0])
	}

	for _, bad := range []Request{{Prompt: "x", OriginalWidth: -1}, {Prompt: "x", CropTop: MaxSize + 1}, {Prompt: "x", TargetWidth: 64}} {
		if _, err := p.Submit(t.Context(), bad); err == nil {
			t.Errorf("Submit(%+v) accepted", bad)
		}
	}
	if _, err := New(Components{Tokenizer: fakeTokenizer{}, TextEncoder: fakeEncoder(0), UNet: u, VAEDecoder: fakeDecoder(0), Scheduler: c.Scheduler, Added: true}, Options{}); err == nil {
		t.Error("New accepted added conditioning with a text encoder without pooled embeddings")
	}
}
