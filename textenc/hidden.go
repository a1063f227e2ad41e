package textenc

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// hiddenStatesPrefix names the per-layer outputs optimum exports
// (transformers' hidden_states[i] as "hidden_states.i").
const hiddenStatesPrefix = "hidden_states."

// pooledName is the projected pooled output of CLIPTextModelWithProjection
// (SDXL's text_encoder_2).
const pooledName = "text_embeds"

// HiddenLayers returns the number of per-layer hidden states the model
// exports (hidden_states.0 … hidden_states.N-1: the embeddings and each
// layer's output), or 0 when it exports none.
func (s *Signature) HiddenLayers() int {
	n := 0
	for _, o := range s.all {
		if i, ok := hiddenIndex(o.Name); ok && i >= n {
			n = i + 1
		}
	}
	return n
}

func hiddenIndex(name string) (int, bool) {
	rest, ok := strings.CutPrefix(name, hiddenStatesPrefix)
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(rest)
	return i, err == nil && i >= 0
}

// HasPooled reports whether the model exports a projected pooled
// embedding (text_embeds, as CLIPTextModelWithProjection does).
func (s *Signature) HasPooled() bool {
	return slices.ContainsFunc(s.all, func(o ort.IOInfo) bool { return o.Name == pooledName })
}

// Penultimate returns the signature of the same model whose Encode returns
// the penultimate hidden state (transformers' hidden_states[-2], which
// Stable Diffusion XL conditions on) instead of last_hidden_state, and,
// when pooled is true, whose EncodePooled also returns text_embeds. A model
// that does not export them gives a *session.SignatureError.
func (s *Signature) Penultimate(pooled bool) (*Signature, error) {
	bad := ort.Bad("textenc", s.path)
	n := s.HiddenLayers()
	if n < 2 {
		return nil, bad("no hidden_states.N outputs to take the penultimate layer from (export the model with its hidden states)")
	}
	name := hiddenStatesPrefix + strconv.Itoa(n-2)
	i := slices.IndexFunc(s.all, func(o ort.IOInfo) bool { return o.Name == name })
	if i < 0 {
		return nil, bad("no %s output", name)
	}
	h := s.all[i]
	if h.DType != ort.Float32 && h.DType != ort.Float16 || len(h.Shape) != 3 {
		return nil, bad("%s is %s%v, want float [batch, sequence, hidden]", name, h.DType, h.Shape)
	}
	c := *s
	c.outs = []ort.IOInfo{h}
	c.hidden = max(int(h.Shape[2]), 0)
	if c.hidden == 0 && h.DType == ort.Float16 {
		return nil, bad("float16 %s needs a fixed hidden size, have %v", name, h.Shape)
	}
	c.pooled = false
	if pooled {
		j := slices.IndexFunc(s.all, func(o ort.IOInfo) bool { return o.Name == pooledName })
		if j < 0 {
			return nil, bad("no %s output (want a CLIPTextModelWithProjection)", pooledName)
		}
		p := s.all[j]
		if p.DType != ort.Float32 && p.DType != ort.Float16 || len(p.Shape) != 2 {
			return nil, bad("%s is %s%v, want float [batch, width]", pooledName, p.DType, p.Shape)
		}
		c.outs = append(c.outs, p)
		c.pooled = true
	}
	return &c, nil
}

// Output returns the name of the hidden-state output Encode returns
// (last_hidden_state, or hidden_states.N for a Penultimate signature).
func (s *Signature) Output() string { return s.outs[0].Name }

// PooledWidth returns the width of text_embeds when the signature selects
// it (Penultimate(true)) and the model fixes it, else 0. optimum declares
// it dynamic; the model's config.json (projection_dim) gives it then.
func (s *Signature) PooledWidth() int {
	if !s.pooled {
		return 0
	}
	return max(int(s.outs[1].Shape[1]), 0)
}

// WithPooledWidth returns the signature with text_embeds' width set to w
// where the model leaves it dynamic (optimum declares it
// [batch_size, "sequence_length"]; config.json's projection_dim gives it):
// a float16 output needs it. A fixed width is kept.
func (s *Signature) WithPooledWidth(w int) *Signature {
	if !s.pooled || s.outs[1].Shape[1] > 0 || w <= 0 {
		return s
	}
	c := *s
	c.outs = slices.Clone(s.outs)
	c.outs[1].Shape = []int64{s.outs[1].Shape[0], int64(w)}
	return &c
}

// EncodePooled is Encode that also returns the pooled embedding of each
// row, [batch, width], for a signature made by Penultimate(true).
func (m *Model) EncodePooled(ctx context.Context, ids []int32, batch int) (hidden, pooled *tensor.Dense, err error) {
	if !m.pooled {
		return nil, nil, fmt.Errorf("textenc: %s: the model was not opened for its %s output", m.path, pooledName)
	}
	outs, err := m.run(ctx, ids, batch)
	if err != nil {
		return nil, nil, err
	}
	return outs[0], outs[1], nil
}
