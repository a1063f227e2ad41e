package ckptrun

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/vae"
)

// wordEmbedding writes an A1111 embedding (emb_params) whose vectors are
// the tiny text encoder's own token embeddings of words' tokens.
func wordEmbedding(t *testing.T, dir, name, words string, tok *tokenizer.CLIP, f *ckpt.File) {
	t.Helper()
	ids := tok.AppendTokens(nil, words)
	table, err := f.Float32s("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
	if err != nil {
		t.Fatal(err)
	}
	var vals []float32
	for _, id := range ids {
		vals = append(vals, table[int(id)*32:(int(id)+1)*32]...)
	}
	err = safetensors.WriteFile(filepath.Join(dir, name+".safetensors"), []safetensors.WriteTensor{
		{Name: "emb_params", DType: safetensors.F32, Shape: []int64{int64(len(ids)), 32}, Data: safetensors.FromFloat32(safetensors.F32, vals)},
	}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
}

// TestEmbeddingsEqualWords: embeddings whose vectors are the text
// encoder's own token embeddings of "horse" (one vector) and "riding a"
// (two) give the same text embeddings and image as the words, with
// weighting and in the negative prompt too; the plain prompt still
// reproduces diffusers' run.
func TestEmbeddingsEqualWords(t *testing.T) {
	b, ckptPath := buildTiny(t, false)
	f, err := ckpt.Open(ckptPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	plain, err := tokenizer.Load(filepath.Join(b.Dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	wordEmbedding(t, dir, "MyHorse", "horse", plain, f)
	wordEmbedding(t, dir, "ride-a", "riding a", plain, f)
	emb, err := LoadEmbeddings(dir, 49408, []int{32})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(emb.Names(), []string{"MyHorse", "ride-a"}) || len(emb.Skipped) != 0 {
		t.Fatalf("names %v, skipped %v", emb.Names(), emb.Skipped)
	}
	tok, err := NewTokenizer(filepath.Join(b.Dir, "tokenizer"), emb)
	if err != nil {
		t.Fatal(err)
	}
	o := ort.Options{IntraOpThreads: 1}
	te, err := OpenTextEncoder(t.Context(), filepath.Join(b.Dir, "text_encoder", "model.onnx"), ckpt.TextEncoder, 32, nil, emb, o)
	if err != nil {
		t.Fatal(err)
	}
	defer te.Close()
	dec, err := vae.OpenDecoder(t.Context(), filepath.Join(b.Dir, "vae_decoder", "model.onnx"), o.Session())
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	un, err := OpenUNet(t.Context(), filepath.Join(b.Dir, "unet", "model.onnx"), nil, o)
	if err != nil {
		t.Fatal(err)
	}
	defer un.Close()
	sc, err := scheduler.LoadConfig(filepath.Join(b.Dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(pipeline.Components{Tokenizer: tok, TextEncoder: te, UNet: un, VAEDecoder: dec, Scheduler: sc}, pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	ref := testenv.LoadTinyReference(t)
	if !strings.Contains(ref.Call.Prompt, "riding a horse") {
		t.Fatalf("reference prompt %q", ref.Call.Prompt)
	}
	gen := func(prompt, negative string) []float32 {
		t.Helper()
		r := request(ref)
		r.Prompt, r.NegativePrompt = prompt, negative
		res, err := p.Generate(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		return res.Pixels.Data().([]float32)
	}
	// The ids differ (extra ids) but the vectors are the words'.
	if a, c := tok.Encode("a myhorse"), plain.Encode("a horse"); slices.Equal(a, c) || a[2] != 49408 {
		t.Errorf("ids %v vs %v: the embedding did not take an extra id", a[:4], c[:4])
	}
	base := gen(ref.Call.Prompt, "")
	if d := testenv.MaxAbsDiff(base, ref.ORT.Image); d > 1e-4 {
		t.Errorf("plain prompt: image differs from diffusers by %g", d)
	}
	for _, tc := range []struct{ withEmb, withWords, neg, negWords string }{
		{strings.Replace(ref.Call.Prompt, "horse", "MyHorse", 1), ref.Call.Prompt, "", ""},
		{strings.Replace(ref.Call.Prompt, "riding a horse", "ride-a myhorse", 1), ref.Call.Prompt, "", ""},
		{strings.Replace(ref.Call.Prompt, "horse", "(myhorse:1.3)", 1), strings.Replace(ref.Call.Prompt, "horse", "(horse:1.3)", 1), "blurry myhorse", "blurry horse"},
	} {
		a, c := gen(tc.withEmb, tc.neg), gen(tc.withWords, tc.negWords)
		if d := testenv.MaxAbsDiff(a, c); d > 1e-6 {
			t.Errorf("%q / %q: image differs from the words' by %g", tc.withEmb, tc.neg, d)
		} else {
			t.Logf("%q (negative %q): max |Δ| from the words' image %.2g", tc.withEmb, tc.neg, d)
		}
	}
	if d := testenv.MaxAbsDiff(gen(strings.Replace(ref.Call.Prompt, "horse", "(horse:1.3)", 1), ""), base); d < 1e-3 {
		t.Errorf("weighting changed the image by only %g: is it applied?", d)
	}
}

func TestLoadEmbeddingFormats(t *testing.T) {
	for _, tc := range []struct {
		file  string
		n, w  int
		first float32
	}{
		{"a1111-embedding.pt", 3, 8, 0},
		{"ldm-embedding.pt", 2, 8, 2},
	} {
		e, err := ckpt.LoadEmbedding(filepath.Join("..", "torchfile", "testdata", tc.file))
		if err != nil {
			t.Fatal(err)
		}
		v := e.Vectors[tc.w]
		if e.Len() != tc.n || len(v) != tc.n || v[0][0] != tc.first || v[0][1] != tc.first+0.25 {
			t.Errorf("%s: %d vectors of widths %v", tc.file, e.Len(), keys(e.Vectors))
		}
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "xl.safetensors")
	safetensors.WriteFile(p, []safetensors.WriteTensor{
		{Name: "clip_l", DType: safetensors.F16, Shape: []int64{2, 768}, Data: make([]byte, 2*768*2)},
		{Name: "clip_g", DType: safetensors.F16, Shape: []int64{2, 1280}, Data: make([]byte, 2*1280*2)},
	}, nil)
	e, err := ckpt.LoadEmbedding(p)
	if err != nil || e.Len() != 2 || len(e.Vectors[768]) != 2 || len(e.Vectors[1280]) != 2 {
		t.Errorf("SDXL embedding: %v %+v", err, e)
	}
	emb, err := LoadEmbeddings(dir, 49408, []int{32})
	if err != nil || len(emb.Names()) != 0 || len(emb.Skipped) != 1 {
		t.Errorf("an SDXL embedding for a width-32 model: %v, names %v, skipped %v", err, emb.Names(), emb.Skipped)
	}
}
