package tokenizer

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func TestEncodeBehavior(t *testing.T) {
	tok := realCLIP(t)
	tests := []struct {
		name string
		text string
		want []string // content tokens
	}{
		{"simple", "a photo", []string{"a</w>", "photo</w>"}},
		{"case folded", "A PHOTO", []string{"a</w>", "photo</w>"}},
		{"white space collapsed", " \t a \n\r photo\u3000 ", []string{"a</w>", "photo</w>"}},
		{"controls dropped", "pho\x00to\x07\u200b", []string{"photo</w>"}},
		{"invalid utf-8 dropped", "pho\xffto\xc3", []string{"photo</w>"}},
		{"contraction", "it's", []string{"it</w>", "'s</w>"}},
		{"digits split", "42", []string{"4</w>", "2</w>"}},
		{"punctuation run", "a!?", []string{"a</w>", "!?</w>"}},
		{"special literal", "a<|endoftext|>b", []string{"a</w>", "<|endoftext|>", "b</w>"}},
		{"special literal start", "<|startoftext|>", []string{"<|startoftext|>"}},
		{"nfc", "cafe\u0301", []string{"café</w>"}},
		{"empty", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := []int32{tok.BOS()}
			for _, s := range tt.want {
				id, ok := tok.vocab[byteLevel(s)]
				if !ok {
					t.Fatalf("token %q not in vocab", s)
				}
				want = append(want, id)
			}
			want = append(want, tok.EOS())
			if diff := cmp.Diff(want, tok.EncodeUntruncated(tt.text)); diff != "" {
				t.Errorf("EncodeUntruncated(%q) (-want +got):\n%s", tt.text, diff)
			}
			enc := tok.Encode(tt.text)
			if len(enc) != 77 || !slices.Equal(enc[:len(want)], want) {
				t.Errorf("Encode(%q) = %v, want %v padded to 77", tt.text, enc, want)
			}
		})
	}
}

// byteLevel maps the UTF-8 bytes of s (but a "</w>" suffix and the special
// tokens) to the byte-level alphabet of vocab.json.
func byteLevel(s string) string {
	if s == DefaultBOS || s == DefaultEOS {
		return s
	}
	body, end := strings.CutSuffix(s, endOfWord)
	var b strings.Builder
	for i := 0; i < len(body); i++ {
		b.WriteRune(byteRunes[body[i]])
	}
	if end {
		b.WriteString(endOfWord)
	}
	return b.String()
}

func TestEncodeTruncation(t *testing.T) {
	tok := realCLIP(t)
	long := strings.Repeat("cat ", 100)
	full := tok.EncodeUntruncated(long)
	if len(full) != 102 {
		t.Fatalf("EncodeUntruncated: %d ids, want 102", len(full))
	}
	enc := tok.Encode(long)
	want := append(slices.Clone(full[:76]), tok.EOS())
	if diff := cmp.Diff(want, enc); diff != "" {
		t.Errorf("Encode of a long prompt (-want +got):\n%s", diff)
	}
	// Truncation keeps exactly 75 content tokens when a special token
	// straddles the limit.
	enc = tok.Encode(strings.Repeat("cat ", 74) + "<|endoftext|><|endoftext|>")
	if len(enc) != 77 || enc[75] != tok.EOS() || enc[76] != tok.EOS() {
		t.Errorf("Encode with trailing specials: %v", enc[70:])
	}
	if got := tok.AppendTokens([]int32{7}, "cat"); len(got) != 2 || got[0] != 7 {
		t.Errorf("AppendTokens = %v, want [7 cat]", got)
	}
}

func TestAccessors(t *testing.T) {
	tok := realCLIP(t)
	if tok.BOS() != 49406 || tok.EOS() != 49407 || tok.Pad() != 49407 || tok.MaxLength() != 77 || tok.VocabSize() != 49408 {
		t.Errorf("BOS %d EOS %d Pad %d MaxLength %d VocabSize %d; want 49406 49407 49407 77 49408",
			tok.BOS(), tok.EOS(), tok.Pad(), tok.MaxLength(), tok.VocabSize())
	}
}

func TestHugeInput(t *testing.T) {
	tok := realCLIP(t)
	// Megabyte-long inputs neither panic nor take long; a megabyte-long
	// word goes through the heap BPE.
	if enc := tok.Encode(strings.Repeat("x", 1<<20)); len(enc) != 77 {
		t.Errorf("Encode of a 1 MiB word gave %d ids", len(enc))
	}
	inputs := []string{
		strings.Repeat("\xff", 1<<20),
		strings.Repeat("猫", 1<<17),
		strings.Repeat("(a:1.5) [b] ", 1<<16),
		strings.Repeat("(", 1<<12) + strings.Repeat("a:1)", 1<<10),
	}
	for i, s := range inputs {
		if enc := tok.Encode(s); len(enc) != 77 {
			t.Errorf("input %d: Encode gave %d ids", i, len(enc))
		}
		if _, err := tok.EncodeWeighted(s); err != nil {
			t.Errorf("input %d: EncodeWeighted: %v", i, err)
		}
	}
	// A1111's bracket resolution is quadratic; pathological nesting is
	// refused rather than taking minutes.
	deep := strings.Repeat("(", 1<<18) + strings.Repeat("a:1)", 1<<16)
	if _, err := tok.EncodeWeighted(deep); !errors.Is(err, ErrTooComplex) {
		t.Errorf("EncodeWeighted of deep nesting: %v, want ErrTooComplex", err)
	}
}

func TestConcurrentEncode(t *testing.T) {
	tok := realCLIP(t)
	prompts := []string{
		"a photo of an astronaut riding a horse on mars",
		"masterpiece, (best quality:1.2), [blurry], 1girl",
		"Ελληνικά γράμματα ΟΔΥΣΣΕΥΣ",
		"東京の夜景 and café crème",
	}
	want := make([][]int32, len(prompts))
	for i, p := range prompts {
		want[i] = tok.EncodeUntruncated(p)
	}
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for g := range 8 {
		wg.Go(func() {
			for n := range 200 {
				i := (g + n) % len(prompts)
				// Unique words keep the cache inserting and evicting.
				if got := tok.EncodeUntruncated(prompts[i]); !slices.Equal(got, want[i]) {
					errs <- fmt.Sprintf("goroutine %d: %q gave %v", g, prompts[i], got)
					return
				}
				tok.Encode(fmt.Sprintf("word%dx%d", g, n))
				if _, err := tok.EncodeWeighted(prompts[i]); err != nil {
					errs <- err.Error()
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestCacheBounded(t *testing.T) {
	tok := realCLIP(t)
	for i := range 3 * cacheShards * cacheShardCap {
		tok.AppendTokens(nil, fmt.Sprintf("w%d", i))
	}
	total := 0
	for i := range tok.cache.shards {
		s := &tok.cache.shards[i]
		s.mu.RLock()
		total += len(s.m)
		s.mu.RUnlock()
	}
	if total > cacheShards*cacheShardCap {
		t.Errorf("cache holds %d words, bound is %d", total, cacheShards*cacheShardCap)
	}
}

func FuzzEncode(f *testing.F) {
	tok := realCLIP(f)
	for _, s := range []string{"a photo", "<|endoftext|>", "ΟΔΟΣ", "İ", "\xff\xfe", "猫 cat", "it's 'S", "a\u0301\u0300"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := tok.Encode(s)
		if len(enc) != 77 || enc[0] != tok.BOS() {
			t.Fatalf("Encode(%q) = %v", s, enc)
		}
		full := tok.EncodeUntruncated(s)
		if len(full) < 2 || full[0] != tok.BOS() || full[len(full)-1] != tok.EOS() {
			t.Fatalf("EncodeUntruncated(%q) = %v", s, full)
		}
		n := min(len(full)-2, 75)
		if !slices.Equal(enc[1:1+n], full[1:1+n]) || enc[1+n] != tok.EOS() {
			t.Fatalf("Encode(%q) is not the truncation of EncodeUntruncated:\n%v\n%v", s, enc, full)
		}
		for _, id := range full {
			if id < 0 || int(id) >= tok.VocabSize() {
				t.Fatalf("id %d out of range", id)
			}
		}
		// Invalid UTF-8 is dropped like U+FFFD.
		if !utf8.ValidString(s) {
			if got := tok.EncodeUntruncated(strings.ToValidUTF8(s, "\uFFFD")); !slices.Equal(got, full) {
				t.Fatalf("invalid bytes of %q not dropped: %v vs %v", s, got, full)
			}
		}
	})
}

func FuzzParseWeighted(f *testing.F) {
	tok := realCLIP(f)
	for _, s := range []string{"(a:1.2)", "((a)) [b] \\(c\\)", "x BREAK y", "(a BREAK b:0.5", "[[(]])", "(a:+.5)", "a:1)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		frags, err := ParseWeighted(s)
		if errors.Is(err, ErrWeight) || errors.Is(err, ErrTooComplex) {
			return
		}
		if err != nil {
			t.Fatalf("ParseWeighted(%q): unexpected error %v", s, err)
		}
		if len(frags) == 0 {
			t.Fatalf("ParseWeighted(%q) gave no fragment", s)
		}
		p, err := tok.EncodeWeighted(s)
		if err != nil {
			t.Fatalf("EncodeWeighted(%q): %v after ParseWeighted succeeded", s, err)
		}
		breaks := 0
		for _, fr := range frags {
			if fr.Break {
				breaks++
			}
		}
		if len(p.Chunks) == 0 || len(p.Chunks) < breaks {
			t.Fatalf("%q: %d chunks for %d BREAKs", s, len(p.Chunks), breaks)
		}
		for _, ch := range p.Chunks {
			if len(ch.IDs) != 77 || len(ch.Weights) != 77 || ch.IDs[0] != tok.BOS() || ch.IDs[76] != tok.EOS() {
				t.Fatalf("%q: malformed chunk %v", s, ch.IDs)
			}
		}
	})
}

func BenchmarkEncode(b *testing.B) {
	tok := realCLIP(b)
	const prompt = "a photo of an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation"
	tok.Encode(prompt) // warm the cache
	b.ReportAllocs()
	for b.Loop() {
		tok.Encode(prompt)
	}
}

func BenchmarkEncodeWeighted(b *testing.B) {
	tok := realCLIP(b)
	const prompt = "masterpiece, (best quality:1.2), a photo of an (astronaut:1.1) riding a [horse] on mars, ((detailed))"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.EncodeWeighted(prompt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeCold(b *testing.B) {
	tok := realCLIP(b)
	const prompt = "a photo of an astronaut riding a horse on mars, highly detailed, 8k, trending on artstation"
	b.ReportAllocs()
	for b.Loop() {
		for i := range tok.cache.shards {
			tok.cache.shards[i].m = nil
		}
		tok.Encode(prompt)
	}
}
