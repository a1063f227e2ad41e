package pipeline

import (
	"image"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/tokenizer"
)

func TestApplyWeights(t *testing.T) {
	z := []float32{1, 2, 3, 4, 5, 6} // 3 tokens × 2 hidden
	orig := mean(z)
	applyWeights(z, []float32{1, 2, 1}, 2)
	if math.Abs(mean(z)-orig) > 1e-6 {
		t.Errorf("mean %g after weighting, want the original %g", mean(z), orig)
	}
	// token 1 was doubled relative to the others before the rescale
	if r := z[2] / z[0]; math.Abs(float64(r)-6) > 1e-5 {
		t.Errorf("ratio of token 1 to token 0 is %g, want 6", r)
	}
	same := []float32{1, 2, 3}
	applyWeights(same, []float32{1, 1, 1}, 1)
	if same[0] != 1 || same[2] != 3 {
		t.Error("all-one weights changed the embeddings")
	}
}

func TestWeightedAndLongPrompts(t *testing.T) {
	dir := filepath.Join(testenv.SharedDir(t), "clip-tokenizer")
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c := fakeComponents(t, &fakeUNet{}, 0)
	c.Tokenizer = tok
	p, err := New(c, Options{DefaultWidth: 64, DefaultHeight: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	var seq int
	var cond []float32
	p.onEncoded = func(j *job) {
		mu.Lock()
		defer mu.Unlock()
		seq, cond = j.seq, append([]float32(nil), j.cond...)
	}
	long := strings.Repeat("a very long prompt, ", 30)
	tests := []struct {
		prompt, negative string
		literal          bool
		seq              int
	}{
		{"a horse on mars", "", false, 77},
		{long, "", false, 2 * 77}, // 150 tokens: two full chunks
		{long, "", true, 77},
		{"a horse BREAK on mars", "", false, 2 * 77},
		{"a horse", "blurry BREAK ugly BREAK dark", false, 3 * 77}, // the prompt is padded to the negative's chunks
	}
	for _, tc := range tests {
		if _, err := p.Generate(t.Context(), Request{Prompt: tc.prompt, NegativePrompt: tc.negative, LiteralPrompt: tc.literal, Steps: 1}); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		if seq != tc.seq {
			t.Errorf("%.30q (literal %v): sequence %d, want %d", tc.prompt, tc.literal, seq, tc.seq)
		}
		mu.Unlock()
	}
	embed := func(prompt string) []float32 {
		if _, err := p.Generate(t.Context(), Request{Prompt: prompt, Steps: 1}); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return cond
	}
	plain, weighted := embed("a horse on mars"), embed("a (horse:1.5) on mars")
	if testenv.MaxAbsDiff(plain, weighted) == 0 {
		t.Error("a weight changed nothing")
	}
	if d := math.Abs(mean(plain) - mean(weighted)); d > 1e-6 {
		t.Errorf("weighting moved the mean by %g", d)
	}
	if _, err := p.Submit(t.Context(), Request{Prompt: strings.Repeat("(", 200) + "x"}); err != nil {
		t.Logf("deeply nested prompt: %v", err) // an error is fine, a panic is not
	}
}

func TestImageTensorFastPathMatches(t *testing.T) {
	img := image.NewNRGBA(image.Rect(3, 5, 3+16, 5+8))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	fast := imageTensor(img).Data().([]float32)
	slow := imageTensor(struct{ image.Image }{img}).Data().([]float32) // hides the concrete type
	if d := testenv.MaxAbsDiff(fast, slow); d != 0 {
		t.Errorf("fast path differs from the generic one by %g", d)
	}
}
