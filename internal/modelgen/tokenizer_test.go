package modelgen

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// bpe encodes one lower-case word with the merges, CLIP-style.
func bpe(word string, rank map[[2]string]int) []string {
	bu := byteUnicode()
	var syms []string
	for _, c := range []byte(word) {
		syms = append(syms, string(bu[c]))
	}
	syms[len(syms)-1] += "</w>"
	for len(syms) > 1 {
		best, at := -1, -1
		for i := 0; i+1 < len(syms); i++ {
			if r, ok := rank[[2]string{syms[i], syms[i+1]}]; ok && (best < 0 || r < best) {
				best, at = r, i
			}
		}
		if at < 0 {
			break
		}
		a, b := syms[at], syms[at+1]
		var out []string
		for i := 0; i < len(syms); i++ {
			if i+1 < len(syms) && syms[i] == a && syms[i+1] == b {
				out = append(out, a+b)
				i++
			} else {
				out = append(out, syms[i])
			}
		}
		syms = out
	}
	return syms
}

func TestGeneratedVocabulary(t *testing.T) {
	v := GenerateVocabulary(0)
	dir := t.TempDir()
	if err := v.WriteFiles(dir, 77); err != nil {
		t.Fatal(err)
	}
	var vocab map[string]int
	shareddir.ReadJSON(t, filepath.Join(dir, "vocab.json"), &vocab)
	if len(vocab) != v.Size() || v.Size() != 512+len(v.Merges)+2 {
		t.Fatalf("vocab.json has %d tokens, Size %d, merges %d", len(vocab), v.Size(), len(v.Merges))
	}
	ids := map[int]string{}
	for tok, id := range vocab {
		if prev, dup := ids[id]; dup {
			t.Fatalf("id %d used by %q and %q", id, prev, tok)
		}
		ids[id] = tok
	}
	// CLIP's layout: '!' first, byte 0 as U+0100 at 188, "</w>" forms from 256,
	// the special tokens last.
	for _, c := range []struct {
		tok string
		id  int
	}{{"!", 0}, {"a", 64}, {"\u0100", 188}, {"!</w>", 256}, {"\u0120</w>", 256 + 188 + 32}, {StartOfText, v.Size() - 2}, {EndOfText, v.Size() - 1}} {
		if vocab[c.tok] != c.id {
			t.Errorf("vocab[%q] = %d, want %d", c.tok, vocab[c.tok], c.id)
		}
	}
	// merges.txt: header, then one merge per line, each producing a token.
	f, err := os.Open(filepath.Join(dir, "merges.txt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan()
	if sc.Text() != "#version: 0.2" {
		t.Errorf("merges.txt header %q", sc.Text())
	}
	rank := map[[2]string]int{}
	for sc.Scan() {
		parts := strings.Split(sc.Text(), " ")
		if len(parts) != 2 {
			t.Fatalf("bad merge line %q", sc.Text())
		}
		if _, ok := vocab[parts[0]+parts[1]]; !ok {
			t.Errorf("merge %q makes a token missing from the vocabulary", sc.Text())
		}
		rank[[2]string{parts[0], parts[1]}] = len(rank)
	}
	if len(rank) != len(v.Merges) {
		t.Errorf("merges.txt has %d merges, want %d", len(rank), len(v.Merges))
	}
	// Every corpus word is a single token; other words split into known tokens.
	for _, w := range strings.Fields(corpusWords) {
		if got := bpe(w, rank); len(got) != 1 {
			t.Errorf("%q encodes to %q, want one token", w, got)
		}
	}
	for _, w := range []string{"xylophone", "zebra", "q"} {
		for _, tok := range bpe(w, rank) {
			if _, ok := vocab[tok]; !ok {
				t.Errorf("%q: token %q not in vocabulary", w, tok)
			}
		}
	}
}
