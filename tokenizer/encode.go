package tokenizer

import (
	"sync"
	"unicode"
	"unicode/utf8"
)

// scratch holds the per-call buffers of appendTokens.
type scratch struct {
	clean, tmp []byte
	syms       []int32
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// appendTokens appends the content ids of text to dst, stopping once dst
// holds limit ids (limit < 0: no limit). It follows
// PreTrainedTokenizer.tokenize: the raw text is first split on the added
// (never-split) tokens, then every other piece is cleaned, pre-tokenized and
// BPE-encoded on its own.
func (c *CLIP) appendTokens(dst []int32, text string, limit int) []int32 {
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	start := 0
	for i := 0; i < len(text) && (limit < 0 || len(dst) < limit); {
		if !c.addedB0[text[i]] {
			i++
			continue
		}
		k := c.matchAdded(text[i:])
		if k < 0 {
			i++
			continue
		}
		dst = c.appendPiece(dst, sc, text[start:i], limit)
		if limit < 0 || len(dst) < limit {
			dst = append(dst, c.addedIDs[k])
		}
		i += len(c.added[k])
		start = i
	}
	if start < len(text) {
		dst = c.appendPiece(dst, sc, text[start:], limit)
	}
	if limit >= 0 && len(dst) > limit {
		dst = dst[:limit]
	}
	return dst
}

// matchAdded returns the index of the longest added token that s starts
// with, or -1.
func (c *CLIP) matchAdded(s string) int {
	for k, t := range c.added {
		if len(s) >= len(t) && s[:len(t)] == t {
			return k
		}
	}
	return -1
}

// appendPiece cleans one piece of text and appends its ids.
func (c *CLIP) appendPiece(dst []int32, sc *scratch, piece string, limit int) []int32 {
	if piece == "" || (limit >= 0 && len(dst) >= limit) {
		return dst
	}
	sc.clean, sc.tmp = appendClean(sc.clean[:0], sc.tmp, piece)
	return c.preTokenize(dst, sc, sc.clean, limit)
}

// Literal special tokens that CLIPTokenizer's BPE cache maps to themselves.
const (
	litStart = "<|startoftext|>"
	litEnd   = "<|endoftext|>"
)

// contractions are the contraction alternatives of the CLIP regex, in order.
var contractions = [...]string{"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"}

// preTokenize splits cleaned text with the CLIP pattern
//
//	<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//
// (ignore case) and appends the BPE ids of every match.
func (c *CLIP) preTokenize(dst []int32, sc *scratch, s []byte, limit int) []int32 {
	for i := 0; i < len(s); {
		if limit >= 0 && len(dst) >= limit {
			return dst
		}
		b := s[i]
		if b == ' ' {
			i++
			continue
		}
		n := 0
		if b == '<' {
			if n = matchFold(s[i:], litStart); n == 0 {
				n = matchFold(s[i:], litEnd)
			}
		} else if b == '\'' {
			for _, t := range contractions {
				if n = matchFold(s[i:], t); n > 0 {
					break
				}
			}
		}
		if n == 0 {
			r, size := utf8.DecodeRune(s[i:])
			switch {
			case isSpace(r):
				i += size
				continue
			case isLetter(r):
				n = size
				for i+n < len(s) {
					r, size := utf8.DecodeRune(s[i+n:])
					if !isLetter(r) {
						break
					}
					n += size
				}
			case isNumber(r):
				n = size
			default:
				n = size
				for i+n < len(s) {
					r, size := utf8.DecodeRune(s[i+n:])
					if isSpace(r) || isLetter(r) || isNumber(r) {
						break
					}
					n += size
				}
			}
		}
		dst = c.appendWord(dst, sc, s[i:i+n])
		i += n
	}
	return dst
}

func isLetter(r rune) bool {
	if r < utf8.RuneSelf {
		return ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z')
	}
	return unicode.IsLetter(r)
}

func isNumber(r rune) bool {
	if r < utf8.RuneSelf {
		return '0' <= r && r <= '9'
	}
	return unicode.IsNumber(r)
}

func isSpace(r rune) bool {
	if r < utf8.RuneSelf {
		return r == ' ' || ('\t' <= r && r <= '\r')
	}
	return unicode.Is(unicode.White_Space, r)
}

// matchFold reports the length of the prefix of s that matches pat (ASCII)
// ignoring case as the regex module does; s is already lowercase, so the
// only other match is U+017F (long s) for 's'.
func matchFold(s []byte, pat string) int {
	n := 0
	for j := 0; j < len(pat); j++ {
		switch {
		case n < len(s) && s[n] == pat[j]:
			n++
		case pat[j] == 's' && n+1 < len(s) && s[n] == 0xC5 && s[n+1] == 0xBF:
			n += 2
		default:
			return 0
		}
	}
	return n
}

// appendWord appends the ids of one pre-token.
func (c *CLIP) appendWord(dst []int32, sc *scratch, word []byte) []int32 {
	if w := string(word); w == litStart || w == litEnd {
		id, ok := c.vocab[w]
		if !ok {
			id = c.unk
		}
		return append(dst, id)
	}
	if ids, ok := c.cache.get(word); ok {
		return append(dst, ids...)
	}
	sc.syms = c.bpe(sc.syms, word)
	n := len(dst)
	for _, s := range sc.syms {
		dst = append(dst, c.symVocab[s])
	}
	c.cache.put(word, dst[n:])
	return dst
}
