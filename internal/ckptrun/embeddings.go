package ckptrun

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// Embeddings is a folder of textual-inversion embeddings for one model.
// Each vector gets a token id at or above the vocabulary size, and a
// never-split token string (one private-use character) that stands for it
// in the text the tokenizer sees; the text encoder reads those ids' vectors
// from its ExtraTokensInput. Embeddings is immutable and safe for
// concurrent use.
type Embeddings struct {
	vocab  int
	list   []*ckpt.Embedding // sorted by name
	first  []int             // first vector index of each
	total  int
	byName map[string]int // lower-case name → index in list
	names  []string       // lower-case names, longest first
	// Skipped lists the files that could not be used, with the reason.
	Skipped []string
}

// embeddingExts are the file types an embeddings folder may hold.
var embeddingExts = []string{".safetensors", ".pt", ".bin"}

// privateBase is the first code point of the token strings (Supplementary
// Private Use Area-A, which prompts never use).
const privateBase = 0xF0000

// LoadEmbeddings reads every embedding under dir ("" for none) that has
// vectors of one of widths (the model's text-encoder widths); the others
// are listed in Skipped, as AUTOMATIC1111 skips them.
func LoadEmbeddings(dir string, vocab int, widths []int) (*Embeddings, error) {
	e := &Embeddings{vocab: vocab, byName: map[string]int{}}
	if dir == "" {
		return e, nil
	}
	var paths []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && slices.Contains(embeddingExts, strings.ToLower(filepath.Ext(p))) {
			paths = append(paths, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ckptrun: embeddings folder: %w", err)
	}
	slices.Sort(paths)
	for _, p := range paths {
		x, err := ckpt.LoadEmbedding(p)
		if err != nil {
			e.Skipped = append(e.Skipped, err.Error())
			continue
		}
		fits := false
		for _, w := range widths {
			_, ok := x.Vectors[w]
			fits = fits || ok
		}
		key := strings.ToLower(x.Name)
		_, dup := e.byName[key]
		switch {
		case !fits:
			e.Skipped = append(e.Skipped, fmt.Sprintf("%s: vectors of width %v do not fit the text encoders (%v)", p, keys(x.Vectors), widths))
			continue
		case dup:
			e.Skipped = append(e.Skipped, fmt.Sprintf("%s: another embedding is named %s", p, x.Name))
			continue
		case strings.ContainsAny(x.Name, "()[]:<>\\") || strings.TrimSpace(x.Name) == "":
			e.Skipped = append(e.Skipped, fmt.Sprintf("%s: the name %q cannot be written in a prompt", p, x.Name))
			continue
		}
		e.byName[key] = len(e.list)
		e.list = append(e.list, x)
		e.first = append(e.first, e.total)
		e.total += x.Len()
	}
	for n := range e.byName {
		e.names = append(e.names, n)
	}
	slices.SortFunc(e.names, func(a, b string) int { return len(b) - len(a) })
	return e, nil
}

func keys(m map[int][][]float32) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Names returns the embeddings' names, sorted.
func (e *Embeddings) Names() []string {
	out := make([]string, len(e.list))
	for i, x := range e.list {
		out[i] = x.Name
	}
	return out
}

// List returns the embeddings, sorted by name.
func (e *Embeddings) List() []*ckpt.Embedding { return slices.Clone(e.list) }

// Tokens returns the never-split token strings and their ids, for the
// tokenizer (tokenizer.Config.AddedTokens).
func (e *Embeddings) Tokens() map[string]int32 {
	out := map[string]int32{}
	for i := range e.total {
		out[string(rune(privateBase+i))] = int32(e.vocab + i)
	}
	return out
}

// Table returns the extra-token table for a text encoder of width width:
// [max(total, 1), width], each embedding's vectors at its ids (zeros for an
// embedding without vectors of that width).
func (e *Embeddings) Table(width int) ([]float32, int64) {
	k := max(e.total, 1)
	t := make([]float32, k*width)
	for i, x := range e.list {
		for j, v := range x.Vectors[width] {
			copy(t[(e.first[i]+j)*width:], v)
		}
	}
	return t, int64(k)
}

// Rewrite replaces each embedding name in prompt (case-insensitive, as a
// whole word: not inside a longer run of letters, digits or '_') by the
// token strings of its vectors. Weighting syntax around a name keeps
// working: (name:1.2) weights every vector.
func (e *Embeddings) Rewrite(prompt string) string {
	if len(e.list) == 0 {
		return prompt
	}
	lower := strings.ToLower(prompt)
	if len(lower) != len(prompt) { // a case mapping changed byte lengths: match on the prompt as is
		lower = prompt
	}
	var b strings.Builder
	last := 0
	for i := 0; i < len(lower); {
		if i > 0 {
			if r, _ := utf8.DecodeLastRuneInString(lower[:i]); isWord(r) {
				_, size := utf8.DecodeRuneInString(lower[i:])
				i += size
				continue
			}
		}
		matched := ""
		for _, n := range e.names {
			if strings.HasPrefix(lower[i:], n) {
				if r, _ := utf8.DecodeRuneInString(lower[i+len(n):]); i+len(n) == len(lower) || !isWord(r) {
					matched = n
					break
				}
			}
		}
		if matched == "" {
			_, size := utf8.DecodeRuneInString(lower[i:])
			i += size
			continue
		}
		k := e.byName[matched]
		b.WriteString(prompt[last:i])
		for j := range e.list[k].Len() {
			b.WriteRune(rune(privateBase + e.first[k] + j))
		}
		i += len(matched)
		last = i
	}
	b.WriteString(prompt[last:])
	return b.String()
}

func isWord(r rune) bool { return r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r) }

// Tokenizer is a CLIP tokenizer that understands the embeddings' names.
// It implements pipeline.WeightedTokenizer.
type Tokenizer struct {
	*tokenizer.CLIP
	emb *Embeddings
}

// NewTokenizer loads the tokenizer in dir with the embeddings' tokens.
func NewTokenizer(dir string, emb *Embeddings) (*Tokenizer, error) {
	cfg, err := tokenizer.ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if cfg.AddedTokens == nil {
		cfg.AddedTokens = map[string]int32{}
	}
	for k, v := range emb.Tokens() {
		cfg.AddedTokens[k] = v
	}
	c, err := tokenizer.LoadWith(dir, cfg)
	if err != nil {
		return nil, err
	}
	if c.VocabSize() != emb.vocab {
		return nil, fmt.Errorf("ckptrun: tokenizer vocabulary %d, the text encoder's %d", c.VocabSize(), emb.vocab)
	}
	return &Tokenizer{CLIP: c, emb: emb}, nil
}

// Encode tokenizes text with the embeddings' names replaced.
func (t *Tokenizer) Encode(text string) []int32 { return t.CLIP.Encode(t.emb.Rewrite(text)) }

// EncodeWeighted tokenizes a weighted prompt with the embeddings' names
// replaced.
func (t *Tokenizer) EncodeWeighted(prompt string) (*tokenizer.Prompt, error) {
	return t.CLIP.EncodeWeighted(t.emb.Rewrite(prompt))
}
