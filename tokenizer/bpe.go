package tokenizer

import (
	"slices"
	"sync"
)

// byteRunes is GPT-2's bytes_to_unicode table: the printable rune that
// stands for each byte in vocab.json and merges.txt.
var byteRunes = func() (t [256]rune) {
	n := rune(0)
	for b := 0; b < 256; b++ {
		if ('!' <= b && b <= '~') || (0xA1 <= b && b <= 0xAC) || (0xAE <= b && b <= 0xFF) {
			t[b] = rune(b)
		} else {
			t[b] = 256 + n
			n++
		}
	}
	return t
}()

// endOfWord is the suffix CLIP's BPE appends to the last symbol of a word.
const endOfWord = "</w>"

// merge is one rule of merges.txt: the pair's rank (line order) and the
// symbol it produces.
type merge struct {
	rank int32
	out  int32
}

func pairKey(a, b int32) uint64 { return uint64(uint32(a))<<32 | uint64(uint32(b)) }

// linearMax is the word length (in symbols) up to which bpe uses the
// quadratic algorithm of the reference implementation; longer words use
// the heap, which gives the same result in O(n log n).
const linearMax = 48

// bpe splits word (UTF-8 bytes of one pre-token) into symbols and applies
// the merges, appending the symbol ids to syms[:0]. It mirrors
// CLIPTokenizer.bpe: each round merges, left to right, every occurrence of
// the adjacent pair of lowest rank.
func (c *CLIP) bpe(syms []int32, word []byte) []int32 {
	syms = c.symbols(syms[:0], word)
	if len(syms) > linearMax {
		return c.bpeHeap(syms)
	}
	return c.bpeLinear(syms)
}

// symbols appends the base symbols of word's bytes to syms, the last byte's
// with the end-of-word mark (</w>).
func (c *CLIP) symbols(syms []int32, word []byte) []int32 {
	for i, b := range word {
		if i == len(word)-1 {
			syms = append(syms, c.baseEnd[b])
		} else {
			syms = append(syms, c.base[b])
		}
	}
	return syms
}

// bpeLinear applies the merges to syms in place with the quadratic loop of
// CLIPTokenizer.bpe: each round finds the adjacent pair of lowest rank and
// merges its every occurrence, left to right.
func (c *CLIP) bpeLinear(syms []int32) []int32 {
	for len(syms) > 1 {
		best := merge{rank: -1}
		var first, second int32
		for i := 0; i+1 < len(syms); i++ {
			m, ok := c.merges[pairKey(syms[i], syms[i+1])]
			if ok && (best.rank < 0 || m.rank < best.rank) {
				best, first, second = m, syms[i], syms[i+1]
			}
		}
		if best.rank < 0 {
			break
		}
		out := syms[:0]
		for i := 0; i < len(syms); {
			if i+1 < len(syms) && syms[i] == first && syms[i+1] == second {
				out = append(out, best.out)
				i += 2
			} else {
				out = append(out, syms[i])
				i++
			}
		}
		syms = out
	}
	return syms
}

// pairHeap is a binary min-heap of candidate merges ordered by rank, then
// position (typed, to avoid container/heap's boxing).
type pairHeap []pairCand

type pairCand struct{ rank, pos int32 }

func (a pairCand) less(b pairCand) bool {
	return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos)
}

func (h *pairHeap) push(c pairCand) {
	*h = append(*h, c)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

func (h *pairHeap) pop() pairCand {
	s := *h
	top := s[0]
	n := len(s) - 1
	s[0] = s[n]
	s = s[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && s[l].less(s[m]) {
			m = l
		}
		if r := l + 1; r < n && s[r].less(s[m]) {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// bpeHeap is bpe for long words: symbols form a linked list and candidate
// pairs sit in a heap. Each round takes every live occurrence of the
// lowest-ranked pair and merges them in position order, skipping those a
// previous merge of the round consumed, which is what the reference's
// left-to-right scan does.
func (c *CLIP) bpeHeap(syms []int32) []int32 {
	n := len(syms)
	next := make([]int32, n)
	prev := make([]int32, n)
	alive := make([]bool, n)
	for i := range n {
		next[i], prev[i], alive[i] = int32(i+1), int32(i-1), true
	}
	next[n-1] = -1
	h := make(pairHeap, 0, n)
	push := h.push
	rankAt := func(i int32) (merge, bool) {
		if i < 0 || !alive[i] || next[i] < 0 {
			return merge{}, false
		}
		m, ok := c.merges[pairKey(syms[i], syms[next[i]])]
		return m, ok
	}
	for i := int32(0); i+1 < int32(n); i++ {
		if m, ok := rankAt(i); ok {
			push(pairCand{m.rank, i})
		}
	}
	var round []int32
	for len(h) > 0 {
		top := h.pop()
		if m, ok := rankAt(top.pos); !ok || m.rank != top.rank {
			continue // stale
		}
		round = append(round[:0], top.pos)
		for len(h) > 0 && h[0].rank == top.rank {
			round = append(round, h.pop().pos)
		}
		slices.Sort(round)
		round = slices.Compact(round)
		for _, p := range round {
			m, ok := rankAt(p)
			if !ok || m.rank != top.rank {
				continue // consumed by the previous merge of this round
			}
			q := next[p]
			syms[p] = m.out
			alive[q] = false
			next[p] = next[q]
			if next[q] >= 0 {
				prev[next[q]] = p
			}
			if m2, ok := rankAt(prev[p]); ok {
				push(pairCand{m2.rank, prev[p]})
			}
			if m2, ok := rankAt(p); ok {
				push(pairCand{m2.rank, p})
			}
		}
	}
	out := syms[:0]
	for i := int32(0); i >= 0; i = next[i] {
		out = append(out, syms[i])
	}
	return out
}

// cacheShards and cacheShardCap bound the BPE cache: at most
// cacheShards*cacheShardCap words of at most cacheMaxWord bytes.
const (
	cacheShards   = 16
	cacheShardCap = 1024
	cacheMaxWord  = 64
)

// bpeCache maps a pre-token to its token ids. It is bounded: a full shard
// evicts an arbitrary entry.
type bpeCache struct {
	shards [cacheShards]cacheShard
}

type cacheShard struct {
	mu sync.RWMutex
	m  map[string][]int32
}

func cacheHash(b []byte) uint32 {
	h := uint32(2166136261)
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	return h
}

func (c *bpeCache) get(word []byte) ([]int32, bool) {
	s := &c.shards[cacheHash(word)%cacheShards]
	s.mu.RLock()
	ids, ok := s.m[string(word)]
	s.mu.RUnlock()
	return ids, ok
}

func (c *bpeCache) put(word []byte, ids []int32) {
	if len(word) > cacheMaxWord {
		return
	}
	s := &c.shards[cacheHash(word)%cacheShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[string][]int32)
	}
	if len(s.m) >= cacheShardCap {
		for k := range s.m {
			delete(s.m, k)
			break
		}
	}
	s.m[string(word)] = slices.Clone(ids)
}
