package tokenizer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// Default special tokens and length of the SD 1.x CLIP tokenizer.
const (
	DefaultBOS       = "<|startoftext|>"
	DefaultEOS       = "<|endoftext|>"
	DefaultMaxLength = 77
)

// maxMerges is how many lines of merges.txt CLIPTokenizer reads after the
// version header: 49152 - 256 - 2.
const maxMerges = 49152 - 256 - 2

// ErrVocab reports tokenizer files that cannot be used.
var ErrVocab = errors.New("tokenizer: invalid vocabulary")

// Config holds the settings of tokenizer_config.json and
// special_tokens_map.json. The zero value means the SD 1.x defaults.
type Config struct {
	// MaxLength is model_max_length, the length of every encoded sequence
	// (BOS + content + EOS + padding). Zero means DefaultMaxLength.
	MaxLength int
	// BOS and EOS are the start and end tokens; empty means DefaultBOS and
	// DefaultEOS.
	BOS, EOS string
	// Pad is the padding token; empty means EOS. SD 2.x (OpenCLIP) uses "!"
	// (id 0).
	Pad string
	// Unk replaces symbols missing from the vocabulary; empty means EOS.
	Unk string
	// AddedTokens are extra tokens that are never split, with their ids
	// (added_tokens_decoder). BOS, EOS, Pad and Unk are always added.
	AddedTokens map[string]int32
}

// CLIP is a byte-level BPE tokenizer giving the same ids as Hugging Face
// transformers' CLIPTokenizer (without ftfy). A *CLIP is immutable after New
// or Load and safe for concurrent use; its BPE cache is bounded.
type CLIP struct {
	vocab     map[string]int32
	vocabSize int
	maxLen    int
	bos, eos  int32
	pad, unk  int32
	comma     int32 // ",</w>", or -1

	// added are the never-split tokens (longest first) and their ids.
	added    []string
	addedIDs []int32
	addedB0  [256]bool // first bytes of added tokens

	symVocab []int32 // symbol id -> vocab id (unk when missing)
	base     [256]int32
	baseEnd  [256]int32
	merges   map[uint64]merge

	cache bpeCache
}

// New builds a tokenizer from the contents of vocab.json (a JSON object
// mapping token strings to ids) and merges.txt. As in CLIPTokenizer, the
// first line of merges.txt (the "#version" header) is skipped whatever it
// holds, and at most 48894 merge lines are read; lines without exactly two
// fields are ignored. The vocabulary must hold BOS, EOS, Pad and Unk.
func New(vocab, merges io.Reader, cfg Config) (*CLIP, error) {
	var v map[string]int32
	if err := json.NewDecoder(vocab).Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: vocab.json: %w", ErrVocab, err)
	}
	c := &CLIP{vocab: v, vocabSize: len(v), maxLen: cfg.MaxLength, comma: -1}
	if c.maxLen == 0 {
		c.maxLen = DefaultMaxLength
	}
	if c.maxLen < 3 {
		return nil, fmt.Errorf("%w: max length %d below 3", ErrVocab, c.maxLen)
	}
	bos := cmpOr(cfg.BOS, DefaultBOS)
	eos := cmpOr(cfg.EOS, DefaultEOS)
	pad := cmpOr(cfg.Pad, eos)
	unk := cmpOr(cfg.Unk, eos)
	for _, t := range []struct {
		name, tok string
		id        *int32
	}{{"bos", bos, &c.bos}, {"eos", eos, &c.eos}, {"pad", pad, &c.pad}, {"unk", unk, &c.unk}} {
		id, ok := v[t.tok]
		if !ok {
			return nil, fmt.Errorf("%w: %s token %q not in vocab.json", ErrVocab, t.name, t.tok)
		}
		*t.id = id
		c.addAdded(t.tok, id)
	}
	for tok, id := range cfg.AddedTokens {
		if tok != "" {
			c.addAdded(tok, id)
		}
	}
	if id, ok := v[","+endOfWord]; ok {
		c.comma = id
	}
	if err := c.buildMerges(merges); err != nil {
		return nil, err
	}
	return c, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (c *CLIP) addAdded(tok string, id int32) {
	for i, t := range c.added {
		if t == tok {
			c.addedIDs[i] = id
			return
		}
	}
	// Keep longest first so the longest match wins.
	i := 0
	for i < len(c.added) && len(c.added[i]) >= len(tok) {
		i++
	}
	c.added = append(c.added[:i], append([]string{tok}, c.added[i:]...)...)
	c.addedIDs = append(c.addedIDs[:i], append([]int32{id}, c.addedIDs[i:]...)...)
	c.addedB0[tok[0]] = true
}

func (c *CLIP) buildMerges(r io.Reader) error {
	syms := make(map[string]int32, 2*maxMerges)
	c.merges = make(map[uint64]merge, maxMerges)
	intern := func(s string) int32 {
		if id, ok := syms[s]; ok {
			return id
		}
		id := int32(len(c.symVocab))
		syms[s] = id
		vid, ok := c.vocab[s]
		if !ok {
			vid = c.unk
		}
		c.symVocab = append(c.symVocab, vid)
		return id
	}
	for b := range 256 {
		s := string(byteRunes[b])
		c.base[b] = intern(s)
		c.baseEnd[b] = intern(s + endOfWord)
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("%w: merges.txt: %w", ErrVocab, err)
	}
	if !utf8.Valid(data) {
		return fmt.Errorf("%w: merges.txt is not UTF-8", ErrVocab)
	}
	sc := bufio.NewScanner(strings.NewReader(strings.TrimSpace(string(data))))
	sc.Buffer(nil, len(data)+1)
	line, rank := 0, int32(0)
	for sc.Scan() {
		line++
		if line == 1 {
			continue // "#version: 0.2"
		}
		if line-1 > maxMerges {
			break
		}
		f := strings.Fields(sc.Text())
		r := rank
		rank++
		if len(f) != 2 {
			continue
		}
		a, b := intern(f[0]), intern(f[1])
		out := intern(f[0] + f[1])
		c.merges[pairKey(a, b)] = merge{rank: r, out: out}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("%w: merges.txt: %w", ErrVocab, err)
	}
	return nil
}

// Load reads vocab.json and merges.txt from dir, plus tokenizer_config.json
// and special_tokens_map.json when present (model_max_length, bos_token,
// eos_token, pad_token, unk_token, added_tokens_decoder). A
// model_max_length outside [3, 65536] (some configs hold 1e30) means
// DefaultMaxLength.
func Load(dir string) (*CLIP, error) {
	var cfg Config
	for _, name := range []string{"special_tokens_map.json", "tokenizer_config.json"} {
		if err := readConfig(filepath.Join(dir, name), &cfg); err != nil {
			return nil, err
		}
	}
	vf, err := os.Open(filepath.Join(dir, "vocab.json"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer vf.Close()
	mf, err := os.Open(filepath.Join(dir, "merges.txt"))
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	defer mf.Close()
	c, err := New(bufio.NewReader(vf), bufio.NewReader(mf), cfg)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, dir)
	}
	return c, nil
}

// tokenField is a special token as a plain string or an AddedToken object.
type tokenField string

func (t *tokenField) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*t = tokenField(s)
		return nil
	}
	var o struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(b, &o); err != nil {
		return err
	}
	*t = tokenField(o.Content)
	return nil
}

func readConfig(path string, cfg *Config) error {
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tokenizer: %w", err)
	}
	var f struct {
		MaxLength *float64   `json:"model_max_length"`
		BOS       tokenField `json:"bos_token"`
		EOS       tokenField `json:"eos_token"`
		Pad       tokenField `json:"pad_token"`
		Unk       tokenField `json:"unk_token"`
		Added     map[string]struct {
			Content string `json:"content"`
		} `json:"added_tokens_decoder"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrVocab, filepath.Base(path), err)
	}
	if f.MaxLength != nil {
		if m := *f.MaxLength; m >= 3 && m <= 65536 && m == math.Trunc(m) {
			cfg.MaxLength = int(m)
		} else {
			cfg.MaxLength = DefaultMaxLength
		}
	}
	set := func(dst *string, v tokenField) {
		if v != "" {
			*dst = string(v)
		}
	}
	set(&cfg.BOS, f.BOS)
	set(&cfg.EOS, f.EOS)
	set(&cfg.Pad, f.Pad)
	set(&cfg.Unk, f.Unk)
	for k, a := range f.Added {
		var id int32
		if _, err := fmt.Sscan(k, &id); err != nil || a.Content == "" {
			return fmt.Errorf("%w: %s: bad added token %q", ErrVocab, filepath.Base(path), k)
		}
		if cfg.AddedTokens == nil {
			cfg.AddedTokens = make(map[string]int32)
		}
		cfg.AddedTokens[a.Content] = id
	}
	return nil
}

// BOS returns the id of the start token (49406 for SD). Safe for concurrent use.
func (c *CLIP) BOS() int32 { return c.bos }

// EOS returns the id of the end token (49407 for SD). Safe for concurrent use.
func (c *CLIP) EOS() int32 { return c.eos }

// Pad returns the padding id: 49407 for SD 1.x, 0 for SD 2.x. Safe for
// concurrent use.
func (c *CLIP) Pad() int32 { return c.pad }

// MaxLength returns the sequence length Encode produces (77 for SD). Safe
// for concurrent use.
func (c *CLIP) MaxLength() int { return c.maxLen }

// VocabSize returns the number of entries of vocab.json (49408 for SD).
// Safe for concurrent use.
func (c *CLIP) VocabSize() int { return c.vocabSize }

// Encode returns exactly MaxLength ids as SD pipelines feed the text
// encoder: BOS, the first MaxLength-2 content tokens, EOS, then padding.
// Any string is accepted (invalid UTF-8 is dropped). Safe for concurrent use.
func (c *CLIP) Encode(text string) []int32 {
	ids := make([]int32, 1, c.maxLen)
	ids[0] = c.bos
	ids = c.appendTokens(ids, text, c.maxLen-1)
	ids = append(ids, c.eos)
	for len(ids) < c.maxLen {
		ids = append(ids, c.pad)
	}
	return ids
}

// EncodeUntruncated returns BOS, every content token and EOS, without
// padding. Safe for concurrent use.
func (c *CLIP) EncodeUntruncated(text string) []int32 {
	ids := []int32{c.bos}
	ids = c.appendTokens(ids, text, -1)
	return append(ids, c.eos)
}

// AppendTokens appends the content tokens of text (no BOS, EOS or padding)
// to dst and returns the extended slice, like CLIPTokenizer with
// add_special_tokens=False. Safe for concurrent use.
func (c *CLIP) AppendTokens(dst []int32, text string) []int32 {
	return c.appendTokens(dst, text, -1)
}
