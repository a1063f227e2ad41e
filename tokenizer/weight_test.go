package tokenizer

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

func TestParseWeighted(t *testing.T) {
	const r, s = RoundFactor, SquareFactor
	tests := []struct {
		prompt string
		want   []Fragment
	}{
		// The examples of A1111's parse_prompt_attention docstring.
		{"normal text", []Fragment{{Text: "normal text", Weight: 1}}},
		{"an (important) word", []Fragment{{Text: "an ", Weight: 1}, {Text: "important", Weight: 1.1}, {Text: " word", Weight: 1}}},
		{"(unbalanced", []Fragment{{Text: "unbalanced", Weight: 1.1}}},
		{`\(literal\]`, []Fragment{{Text: "(literal]", Weight: 1}}},
		{"(unnecessary)(parens)", []Fragment{{Text: "unnecessaryparens", Weight: 1.1}}},
		{"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).", []Fragment{
			{Text: "a ", Weight: 1},
			{Text: "house", Weight: 1.3 * r * r},
			{Text: " ", Weight: r},
			{Text: "on", Weight: r * s},
			{Text: " a ", Weight: r},
			{Text: "hill", Weight: 0.5 * r},
			{Text: ", sun, ", Weight: r},
			{Text: "sky", Weight: r * r * r * r},
			{Text: ".", Weight: r},
		}},
		// Further cases.
		{"", []Fragment{{Text: "", Weight: 1}}},
		{"((word))", []Fragment{{Text: "word", Weight: r * r}}},
		{"[word]", []Fragment{{Text: "word", Weight: s}}},
		{"[[word]]", []Fragment{{Text: "word", Weight: s * s}}},
		{"(word:1.3)", []Fragment{{Text: "word", Weight: 1.3}}},
		{"(word: -0.5 )", []Fragment{{Text: "word", Weight: -0.5}}},
		{"((a:2) b)", []Fragment{{Text: "a", Weight: 2 * r}, {Text: " b", Weight: r}}},
		{"a:1.2) b", []Fragment{{Text: "a:1.2) b", Weight: 1}}},
		{"a) b] c", []Fragment{{Text: "a) b] c", Weight: 1}}},
		{"16:9", []Fragment{{Text: "16:9", Weight: 1}}},
		{`C:\Users\x`, []Fragment{{Text: "C:Usersx", Weight: 1}}},
		{`\\`, []Fragment{{Text: `\`, Weight: 1}}},
		{"(a:١.٥)", []Fragment{{Text: "a", Weight: 1.5}}},
		{"a BREAK b", []Fragment{{Text: "a", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: "b", Weight: 1}}},
		{"a\nBREAK\nb", []Fragment{{Text: "a", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: "b", Weight: 1}}},
		{"BREAK", []Fragment{{Text: "", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: "", Weight: 1}}},
		{"aBREAK b BREAKs break", []Fragment{{Text: "aBREAK b BREAKs break", Weight: 1}}},
		{"a,BREAK,b", []Fragment{{Text: "a,", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: ",b", Weight: 1}}},
		{"(x) BREAK BREAK y", []Fragment{{Text: "x", Weight: r}, {Text: "", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: "", Weight: 1}, {Text: "BREAK", Weight: -1, Break: true}, {Text: "y", Weight: 1}}},
		// A BREAK inside brackets is scaled like its neighbours and so
		// becomes plain text, as in A1111.
		{"(a BREAK b)", []Fragment{{Text: "a", Weight: r}, {Text: "BREAK", Weight: -r}, {Text: "b", Weight: r}}},
		{"(a:1e5)", []Fragment{{Text: "a:1e5", Weight: r}}},
	}
	for _, tt := range tests {
		got, err := ParseWeighted(tt.prompt)
		if err != nil {
			t.Errorf("ParseWeighted(%q): %v", tt.prompt, err)
			continue
		}
		// Weights are products of float64 factors; A1111 multiplies in
		// the same order, so they agree to the last bit here, but allow
		// rounding in the hand-written expectations.
		if diff := cmp.Diff(tt.want, got, cmpopts.EquateApprox(0, 1e-12)); diff != "" {
			t.Errorf("ParseWeighted(%q) (-want +got):\n%s", tt.prompt, diff)
		}
	}
}

func TestParseWeightedExactProducts(t *testing.T) {
	// A1111 gives 1.5730000000000004 and 1.4641000000000006 in its
	// docstring: the same float64 products in the same order.
	got, err := ParseWeighted("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
	if err != nil {
		t.Fatal(err)
	}
	if got[1].Weight != 1.5730000000000004 || got[7].Weight != 1.4641000000000006 {
		t.Errorf("weights %v and %v, want 1.5730000000000004 and 1.4641000000000006", got[1].Weight, got[7].Weight)
	}
}

func TestParseWeightedErrors(t *testing.T) {
	for _, p := range []string{"(a:1.2.3)", "(a:.)", "(x:+..)"} {
		if _, err := ParseWeighted(p); !errors.Is(err, ErrWeight) {
			t.Errorf("ParseWeighted(%q) error = %v, want ErrWeight", p, err)
		}
	}
	got, err := ParseWeighted("(a:" + strings.Repeat("9", 400) + ")")
	if err != nil || !math.IsInf(got[0].Weight, 1) {
		t.Errorf("huge weight: %v, %v; want +Inf as Python's float gives", got, err)
	}
}

// contentOf returns the content ids of a chunk (between BOS and the first EOS).
func contentOf(tok *CLIP, ch Chunk) []int32 {
	end := slices.Index(ch.IDs[1:], tok.EOS())
	return ch.IDs[1 : 1+end]
}

func TestEncodeWeighted(t *testing.T) {
	tok := realCLIP(t)
	p, err := tok.EncodeWeighted("a (red:1.5) [cat], ((photo))")
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Chunks) != 1 {
		t.Fatalf("%d chunks, want 1", len(p.Chunks))
	}
	ch := p.Chunks[0]
	if len(ch.IDs) != 77 || len(ch.Weights) != 77 {
		t.Fatalf("chunk lengths %d, %d; want 77", len(ch.IDs), len(ch.Weights))
	}
	// Each fragment is tokenized on its own and concatenated.
	var want []int32
	var wantW []float32
	for _, f := range []struct {
		text string
		w    float64
	}{{"a ", 1}, {"red", 1.5}, {" ", 1}, {"cat", SquareFactor}, {", ", 1}, {"photo", RoundFactor * RoundFactor}} {
		ids := tok.AppendTokens(nil, f.text)
		want = append(want, ids...)
		for range ids {
			wantW = append(wantW, float32(f.w))
		}
	}
	if diff := cmp.Diff(want, contentOf(tok, ch)); diff != "" {
		t.Errorf("content ids (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantW, ch.Weights[1:1+len(wantW)]); diff != "" {
		t.Errorf("weights (-want +got):\n%s", diff)
	}
	if ch.IDs[0] != tok.BOS() || ch.Weights[0] != 1 {
		t.Errorf("chunk starts with %d (weight %v), want BOS weight 1", ch.IDs[0], ch.Weights[0])
	}
	for i := 1 + len(want); i < 77; i++ {
		if ch.IDs[i] != tok.EOS() || ch.Weights[i] != 1 {
			t.Fatalf("position %d: id %d weight %v, want EOS padding with weight 1", i, ch.IDs[i], ch.Weights[i])
		}
	}
	// Plain prompts give the ids of Encode.
	plain := "a photo of an astronaut riding a horse on mars"
	p, err = tok.EncodeWeighted(plain)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(tok.Encode(plain), p.Chunks[0].IDs); diff != "" {
		t.Errorf("plain prompt (-Encode +EncodeWeighted):\n%s", diff)
	}
	if _, err := tok.EncodeWeighted("(x:1.2.3)"); !errors.Is(err, ErrWeight) {
		t.Errorf("EncodeWeighted with a bad weight: %v, want ErrWeight", err)
	}
}

func TestChunking(t *testing.T) {
	tok := realCLIP(t)
	cat := tok.AppendTokens(nil, "cat")
	comma := tok.AppendTokens(nil, ",")
	if len(cat) != 1 || len(comma) != 1 || comma[0] != tok.comma {
		t.Fatalf("cat %v, comma %v: expected single tokens", cat, comma)
	}
	words := func(n int) string { return strings.TrimSpace(strings.Repeat("cat ", n)) }
	tests := []struct {
		name   string
		prompt string
		// content of each chunk, as counts of "cat" tokens and commas
		// described by a builder below
		want [][]int32
	}{
		{"empty", "", [][]int32{{}}},
		{"75 tokens fill one chunk", words(75), [][]int32{rep(cat[0], 75)}},
		{"76 tokens spill", words(76), [][]int32{rep(cat[0], 75), rep(cat[0], 1)}},
		{"200 tokens", words(200), [][]int32{rep(cat[0], 75), rep(cat[0], 75), rep(cat[0], 50)}},
		{"BREAK", "cat BREAK cat cat", [][]int32{rep(cat[0], 1), rep(cat[0], 2)}},
		{"trailing BREAK", "cat BREAK", [][]int32{rep(cat[0], 1)}},
		{"leading BREAK", "BREAK cat", [][]int32{{}, rep(cat[0], 1)}},
		// A comma at content position 60 (within the last 20 of 75):
		// the 14 tokens after it move to the next chunk.
		{"comma backtrack", words(60) + ", " + words(20), [][]int32{
			append(rep(cat[0], 60), comma[0]),
			rep(cat[0], 20),
		}},
		// A comma too far back (position 40) is not used.
		{"comma too far", words(40) + ", " + words(40), [][]int32{
			append(append(rep(cat[0], 40), comma[0]), rep(cat[0], 34)...),
			rep(cat[0], 6),
		}},
		// A comma exactly filling the chunk starts no backtrack.
		{"comma at end", words(74) + ", cat", [][]int32{
			append(rep(cat[0], 74), comma[0]),
			rep(cat[0], 1),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := tok.EncodeWeighted(tt.prompt)
			if err != nil {
				t.Fatal(err)
			}
			var got [][]int32
			for _, ch := range p.Chunks {
				if len(ch.IDs) != 77 || len(ch.Weights) != 77 || ch.IDs[0] != tok.BOS() {
					t.Fatalf("malformed chunk %v", ch.IDs)
				}
				got = append(got, contentOf(tok, ch))
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("chunks (-want +got):\n%s", diff)
			}
		})
	}
}

func rep(id int32, n int) []int32 {
	s := make([]int32, n)
	for i := range s {
		s[i] = id
	}
	return s
}

func TestChunkWeightsMove(t *testing.T) {
	tok := realCLIP(t)
	// The words after the last comma keep their weights when moved.
	prompt := strings.Repeat("cat ", 70) + ", (dog dog dog dog dog dog:1.5)"
	p, err := tok.EncodeWeighted(prompt)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Chunks) != 2 {
		t.Fatalf("%d chunks, want 2", len(p.Chunks))
	}
	second := p.Chunks[1]
	dog := tok.AppendTokens(nil, "dog")[0]
	for i := 1; i <= 6; i++ {
		if second.IDs[i] != dog || second.Weights[i] != 1.5 {
			t.Errorf("chunk 2 position %d: id %d weight %v, want dog at 1.5", i, second.IDs[i], second.Weights[i])
		}
	}
}

func TestPadChunks(t *testing.T) {
	tok := realCLIP(t)
	pos, err := tok.EncodeWeighted(strings.Repeat("cat ", 100))
	if err != nil {
		t.Fatal(err)
	}
	neg, err := tok.EncodeWeighted("blurry")
	if err != nil {
		t.Fatal(err)
	}
	empty, err := tok.EncodeWeighted("")
	if err != nil {
		t.Fatal(err)
	}
	tok.PadChunks(pos, neg, nil)
	if len(pos.Chunks) != 2 || len(neg.Chunks) != 2 {
		t.Fatalf("chunk counts %d and %d, want 2 and 2", len(pos.Chunks), len(neg.Chunks))
	}
	if diff := cmp.Diff(empty.Chunks[0], neg.Chunks[1]); diff != "" {
		t.Errorf("padding chunk is not the empty prompt's (-want +got):\n%s", diff)
	}
}

func TestChunkSD2Padding(t *testing.T) {
	dir := writeSmall(t, `{"pad_token": "!"}`)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, err := tok.EncodeWeighted("cat")
	if err != nil {
		t.Fatal(err)
	}
	ids := p.Chunks[0].IDs
	if ids[2] != tok.EOS() || ids[3] != tok.Pad() || ids[76] != tok.Pad() {
		t.Errorf("ids %v: want BOS cat EOS then pad %d", ids[:6], tok.Pad())
	}
	if diff := cmp.Diff(tok.Encode("cat"), ids); diff != "" {
		t.Errorf("EncodeWeighted differs from Encode (-Encode +EncodeWeighted):\n%s", diff)
	}
}
