package tokenizer

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"
)

func TestParityPublic(t *testing.T) {
	if unicode.Version != unicodeTablesVersion {
		t.Errorf("Go unicode tables are %s, newInUnicode15 was made for %s: rerun testdata/unicode14", unicode.Version, unicodeTablesVersion)
	}
	tok := realCLIP(t)
	cases := refCases(t)
	fails := 0
	for _, rc := range cases {
		got := tok.Encode(rc.Prompt)
		if diff := cmp.Diff(rc.IDs, got); diff != "" {
			fails++
			t.Errorf("Encode(%q) mismatch (-want +got):\n%s\ntokens: %q", rc.Prompt, diff, rc.Tokens)
		}
		if got := tok.EncodeUntruncated(rc.Prompt); !cmp.Equal(rc.IDsUntruncated, got) {
			fails++
			t.Errorf("EncodeUntruncated(%q) mismatch (-want +got):\n%s", rc.Prompt, cmp.Diff(rc.IDsUntruncated, got))
		}
	}
	t.Logf("%d prompts, %d mismatches", len(cases), fails)
}

func TestParityPublicFtfy(t *testing.T) {
	dir := filepath.Join(sharedDir(t), "clip-tokenizer")
	cfg, err := ReadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Ftfy = true
	tok, err := LoadWith(dir, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cases := refCases(t)
	fails := 0
	for _, rc := range cases {
		if got := tok.Encode(rc.Prompt); !cmp.Equal(rc.IDsFtfy, got) {
			fails++
			t.Errorf("ftfy Encode(%q) mismatch (-want +got):\n%s", rc.Prompt, cmp.Diff(rc.IDsFtfy, got))
		}
		if got := tok.EncodeUntruncated(rc.Prompt); !cmp.Equal(rc.IDsUntruncatedFtfy, got) {
			fails++
			t.Errorf("ftfy EncodeUntruncated(%q) mismatch (-want +got):\n%s", rc.Prompt, cmp.Diff(rc.IDsUntruncatedFtfy, got))
		}
	}
	t.Logf("%d prompts, %d mismatches", len(cases), fails)
}

// TestHeapMatchesLinearReal checks the heap BPE used for long words against
// the reference loop with the real merges, on the words of the reference
// prompts and on random long words.
func TestHeapMatchesLinearReal(t *testing.T) {
	tok := realCLIP(t)
	var words []string
	for _, rc := range refCases(t) {
		words = append(words, strings.Fields(strings.ToLower(rc.Prompt))...)
	}
	rng := rand.New(rand.NewPCG(3, 4))
	for range 200 {
		alpha := []string{"ab", "etaoin", "(", "!?", "xyz", "lo", "ñé"}[rng.IntN(7)]
		n := 1 + rng.IntN(200)
		var b strings.Builder
		for range n {
			b.WriteByte(alpha[rng.IntN(len(alpha))])
		}
		words = append(words, b.String())
	}
	for _, w := range words {
		syms := tok.symbols(nil, []byte(w))
		want := tok.bpeLinear(slices.Clone(syms))
		if got := tok.bpeHeap(slices.Clone(syms)); !slices.Equal(got, want) {
			t.Fatalf("word %q: heap %v, linear %v", w, got, want)
		}
	}
}
