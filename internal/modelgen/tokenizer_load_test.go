package modelgen

import (
	"testing"

	"github.com/sdpipe/sdpipe/tokenizer"
)

// TestTokenizerLoadsGeneratedFiles checks the generated tokenizer folder
// with the project's CLIP tokenizer.
func TestTokenizerLoadsGeneratedFiles(t *testing.T) {
	dir := t.TempDir()
	v := GenerateVocabulary(0)
	if err := v.WriteFiles(dir, 77); err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if tok.VocabSize() != v.Size() || tok.BOS() != int32(v.Size()-2) || tok.EOS() != int32(v.Size()-1) || tok.MaxLength() != 77 {
		t.Fatalf("vocab %d bos %d eos %d max %d; want %d, %d, %d, 77", tok.VocabSize(), tok.BOS(), tok.EOS(), tok.MaxLength(), v.Size(), v.Size()-2, v.Size()-1)
	}
	ids := tok.Encode("A photo of an Astronaut riding a horse on Mars")
	if len(ids) != 77 || ids[0] != tok.BOS() || ids[11] != tok.EOS() || ids[76] != tok.Pad() {
		t.Fatalf("ids = %v", ids)
	}
	for i, w := range []string{"a", "photo", "of", "an", "astronaut", "riding", "a", "horse", "on", "mars"} {
		if got, want := ids[1+i], int32(indexOf(v.Tokens, w+"</w>")); got != want {
			t.Errorf("token %d (%q) = %d, want %d", i, w, got, want)
		}
	}
}

func indexOf(s []string, x string) int {
	for i, v := range s {
		if v == x {
			return i
		}
	}
	return -1
}
