package tokenizer

// Chunk is one text-encoder input: MaxLength ids (BOS, up to MaxLength-2
// content tokens, EOS, padding) and the attention weight of each id (1 for
// BOS, EOS and padding).
type Chunk struct {
	IDs     []int32
	Weights []float32
}

// Prompt is a weighted prompt split into chunks. Callers encode each chunk,
// scale the hidden states by Weights and concatenate the chunks along the
// sequence axis, as AUTOMATIC1111 does.
type Prompt struct {
	Chunks []Chunk
}

// EncodeWeighted parses prompt with ParseWeighted and splits it into chunks
// the way AUTOMATIC1111 (modules/sd_hijack_clip.tokenize_line) does: each
// fragment is tokenized on its own; a chunk holds MaxLength-2 content
// tokens; when a chunk is full and a comma lies within its last 20 tokens,
// the tokens after that comma move to the next chunk; BREAK closes the
// current chunk; an empty prompt gives one chunk. Chunks are padded with EOS
// and then, for tokenizers whose pad differs from EOS (SD 2.x), every id
// after the first EOS becomes Pad, as A1111 does. Textual-inversion
// embeddings are not handled. Errors are those of ParseWeighted (ErrWeight,
// ErrTooComplex). Safe for concurrent use.
func (c *CLIP) EncodeWeighted(prompt string) (*Prompt, error) {
	frags, err := ParseWeighted(prompt)
	if err != nil {
		return nil, err
	}
	n := c.maxLen - 2
	p := &Prompt{}
	var ids []int32
	var ws []float32
	lastComma := -1
	next := func() {
		p.Chunks = append(p.Chunks, c.makeChunk(ids, ws))
		ids, ws = ids[:0], ws[:0]
		lastComma = -1
	}
	var toks []int32
	for _, f := range frags {
		if f.Break {
			next()
			continue
		}
		toks = c.appendTokens(toks[:0], f.Text, -1)
		w := float32(f.Weight)
		for _, t := range toks {
			if t == c.comma {
				lastComma = len(ids)
			} else if len(ids) == n && lastComma != -1 && len(ids)-lastComma <= chunkBacktrack {
				at := lastComma + 1
				relocIDs := append([]int32(nil), ids[at:]...)
				relocWs := append([]float32(nil), ws[at:]...)
				ids, ws = ids[:at], ws[:at]
				next()
				ids, ws = append(ids, relocIDs...), append(ws, relocWs...)
			}
			if len(ids) == n {
				next()
			}
			ids = append(ids, t)
			ws = append(ws, w)
		}
	}
	if len(ids) > 0 || len(p.Chunks) == 0 {
		next()
	}
	return p, nil
}

// makeChunk frames content (at most MaxLength-2 ids) with BOS and EOS and
// pads it, copying ids and ws.
func (c *CLIP) makeChunk(ids []int32, ws []float32) Chunk {
	ch := Chunk{IDs: make([]int32, c.maxLen), Weights: make([]float32, c.maxLen)}
	ch.IDs[0], ch.Weights[0] = c.bos, 1
	copy(ch.IDs[1:], ids)
	copy(ch.Weights[1:], ws)
	for i := 1 + len(ids); i < c.maxLen; i++ {
		ch.IDs[i], ch.Weights[i] = c.eos, 1
	}
	if c.pad != c.eos {
		seen := false
		for i, id := range ch.IDs {
			if seen {
				ch.IDs[i] = c.pad
			} else if id == c.eos {
				seen = true
			}
		}
	}
	return ch
}

// PadChunks appends empty-prompt chunks (BOS, EOS, padding; weights 1) to
// the prompts with fewer chunks, so that all have as many chunks as the
// longest, as A1111 pads the negative prompt to the positive one
// (pad_cond_uncond). Nil prompts are skipped. It modifies the prompts; it is
// safe for concurrent use on distinct prompts.
func (c *CLIP) PadChunks(prompts ...*Prompt) {
	most := 0
	for _, p := range prompts {
		if p != nil {
			most = max(most, len(p.Chunks))
		}
	}
	for _, p := range prompts {
		for p != nil && len(p.Chunks) < most {
			p.Chunks = append(p.Chunks, c.makeChunk(nil, nil))
		}
	}
}
