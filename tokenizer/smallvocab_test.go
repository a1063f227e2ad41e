package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// smallVocab builds a CLIP-format vocabulary as a model generator would:
// the 256 byte symbols in bytes_to_unicode order, their "</w>" variants,
// the products of merges, then <|startoftext|> and <|endoftext|>.
func smallVocab(merges [][2]string) (vocab map[string]int32, mergesTxt string) {
	vocab = make(map[string]int32)
	add := func(s string) {
		if _, ok := vocab[s]; !ok {
			vocab[s] = int32(len(vocab))
		}
	}
	var order []int
	for b := range 256 {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			order = append(order, b)
		}
	}
	for b := range 256 {
		if !slices.Contains(order, b) {
			order = append(order, b)
		}
	}
	for _, b := range order {
		add(string(byteRunes[b]))
	}
	for _, b := range order {
		add(string(byteRunes[b]) + "</w>")
	}
	var sb strings.Builder
	sb.WriteString("#version: 0.2\n")
	for _, m := range merges {
		add(m[0] + m[1])
		fmt.Fprintf(&sb, "%s %s\n", m[0], m[1])
	}
	add(DefaultBOS)
	add(DefaultEOS)
	return vocab, sb.String()
}

var smallMerges = [][2]string{
	{"c", "a"}, {"ca", "t</w>"}, {"d", "o"}, {"do", "g</w>"}, {"r", "e"},
	{"re", "d</w>"}, {"a", "</w>"}, {"a</w>", "x"}, // last one unused: a</w> is never followed
	{"Ġ", "Ġ"}, {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o</w>"},
	{"a", "a"}, {"aa", "a"}, {"aa", "aa"}, {",", "</w>"},
}

func writeSmall(t *testing.T, cfg string) string {
	t.Helper()
	vocab, merges := smallVocab(smallMerges)
	dir := t.TempDir()
	vj, err := json.Marshal(vocab)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{"vocab.json": string(vj), "merges.txt": merges}
	if cfg != "" {
		files["tokenizer_config.json"] = cfg
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestSmallVocab(t *testing.T) {
	dir := writeSmall(t, `{"model_max_length": 16, "pad_token": "!"}`)
	tok, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	vocab, _ := smallVocab(smallMerges)
	if got, want := tok.VocabSize(), len(vocab); got != want {
		t.Errorf("VocabSize = %d, want %d", got, want)
	}
	if tok.MaxLength() != 16 || tok.Pad() != vocab["!"] || tok.BOS() != vocab[DefaultBOS] || tok.EOS() != vocab[DefaultEOS] {
		t.Errorf("config not applied: max %d pad %d bos %d eos %d", tok.MaxLength(), tok.Pad(), tok.BOS(), tok.EOS())
	}
	id := func(s string) int32 {
		v, ok := vocab[s]
		if !ok {
			t.Fatalf("%q not in vocab", s)
		}
		return v
	}
	tests := []struct {
		text string
		want []string
	}{
		{"cat", []string{"cat</w>"}},
		{"CAT dog", []string{"cat</w>", "dog</w>"}},
		{"red, hello", []string{"red</w>", ",</w>", "hello</w>"}},
		{"cats", []string{"ca", "t", "s</w>"}},
		{"a", []string{"a</w>"}},
		{"aaa", []string{"aa", "a</w>"}}, // (a,a) merges left to right; a</w> stays apart
		{"aaaa", []string{"aaa", "a</w>"}},
		{"aaaaa", []string{"aaaa", "a</w>"}},
		{"é", []string{"Ã", "©</w>"}},
		{"", nil},
	}
	for _, tt := range tests {
		var want []int32
		for _, s := range tt.want {
			want = append(want, id(s))
		}
		got := tok.EncodeUntruncated(tt.text)
		want = append(append([]int32{tok.BOS()}, want...), tok.EOS())
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("EncodeUntruncated(%q) (-want +got):\n%s", tt.text, diff)
		}
	}
	// "!" is the pad token, so it is never split (transformers adds every
	// special token to the never-split list).
	got := tok.Encode("cat!!")
	want := []int32{tok.BOS(), id("cat</w>"), id("!"), id("!"), tok.EOS()}
	for len(want) < 16 {
		want = append(want, id("!"))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Encode(cat!!) (-want +got):\n%s", diff)
	}
}

func TestNewErrors(t *testing.T) {
	vocab, merges := smallVocab(smallMerges)
	vj, _ := json.Marshal(vocab)
	tests := []struct {
		name          string
		vocab, merges string
		cfg           Config
	}{
		{"bad json", "{", merges, Config{}},
		{"missing bos", string(vj), merges, Config{BOS: "<s>"}},
		{"missing pad", string(vj), merges, Config{Pad: "<pad>"}},
		{"tiny max length", string(vj), merges, Config{MaxLength: 2}},
		{"merges not utf-8", string(vj), "#version\n\xff \xfe\n", Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(strings.NewReader(tt.vocab), strings.NewReader(tt.merges), tt.cfg)
			if err == nil {
				t.Fatal("New succeeded, want error")
			}
			if !strings.HasPrefix(err.Error(), "tokenizer: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
	if _, err := Load(t.TempDir()); err == nil {
		t.Error("Load of an empty directory succeeded")
	}
}

// TestHeapMatchesLinear checks that the O(n log n) merge loop used for long
// words gives the reference's result, on random words over a small alphabet
// where many merges compete.
func TestHeapMatchesLinear(t *testing.T) {
	var merges [][2]string
	letters := []string{"a", "b", "c"}
	syms := slices.Clone(letters)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 60 {
		a := syms[rng.IntN(len(syms))]
		b := syms[rng.IntN(len(syms))]
		if rng.IntN(4) == 0 {
			b = letters[rng.IntN(3)] + "</w>"
		}
		merges = append(merges, [2]string{a, b})
		if !strings.HasSuffix(b, "</w>") {
			syms = append(syms, a+b)
		}
	}
	vocab, mt := smallVocab(merges)
	vj, _ := json.Marshal(vocab)
	tok, err := New(bytes.NewReader(vj), strings.NewReader(mt), Config{})
	if err != nil {
		t.Fatal(err)
	}
	for range 500 {
		n := 1 + rng.IntN(3*linearMax)
		word := make([]byte, n)
		for i := range word {
			word[i] = "abc"[rng.IntN(3)]
		}
		lin := tok.symbols(nil, word)
		heapSyms := tok.bpeHeap(slices.Clone(lin))
		linSyms := tok.bpeLinear(slices.Clone(lin))
		if !slices.Equal(heapSyms, linSyms) {
			t.Fatalf("word %s: heap %v, linear %v", word, heapSyms, linSyms)
		}
	}
}
