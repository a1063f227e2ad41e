package modelgen

import (
	"errors"
	"fmt"
	"math"
	"strconv"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// opset is the default-domain opset of generated models (17 has
// LayerNormalization).
const opset = 17

// maskValue is the additive causal-mask value: far below any score, and
// finite in float16.
const maskValue = -1e4

// BuildTextEncoder returns the CLIP text transformer cfg.Text (component
// TextEncoder): input_ids [batch, sequence] → last_hidden_state [batch,
// sequence, hidden] and pooler_output [batch, hidden] (the final hidden
// state at the end-of-text position, as transformers pools), then, with
// Options.HiddenStates or in the Optimum layout, hidden_states.0 …
// hidden_states.L (the embeddings and each layer's output before the final
// layer norm, as transformers' hidden_states). vocab is the number of token
// embeddings when cfg.Text.Vocab is zero.
func BuildTextEncoder(cfg Config, opt Options, vocab int) (*onnxpb.Model, error) {
	opt = opt.resolve(cfg)
	ids := opt.IDs
	if ids == onnxpb.Undefined {
		ids = onnxpb.Int32
	}
	return buildText(cfg, cfg.Text, TextEncoder, ids, opt, vocab)
}

// BuildTextEncoder2 returns SDXL's second text encoder cfg.Text2
// (component TextEncoder2, transformers CLIPTextModelWithProjection):
// input_ids → text_embeds [batch, projection] (text_projection of the
// pooled output), last_hidden_state and the hidden states as
// BuildTextEncoder writes them. Its input_ids are int64 unless
// Options.IDs2 says otherwise.
func BuildTextEncoder2(cfg Config, opt Options, vocab int) (*onnxpb.Model, error) {
	if cfg.Text2 == nil {
		return nil, fmt.Errorf("modelgen: config %q has no second text encoder", cfg.Name)
	}
	opt = opt.resolve(cfg)
	ids := opt.IDs2
	if ids == onnxpb.Undefined {
		ids = onnxpb.Int64
	}
	return buildText(cfg, *cfg.Text2, TextEncoder2, ids, opt, vocab)
}

func buildText(cfg Config, tc TextConfig, comp Component, idsType onnxpb.DataType, opt Options, vocab int) (*onnxpb.Model, error) {
	b, err := newModelBuilder(cfg, opt, comp)
	if err != nil {
		return nil, err
	}
	if tc.Vocab > 0 {
		vocab = tc.Vocab
	}
	if vocab <= 0 {
		return nil, errors.New("modelgen: text encoder vocabulary size not given")
	}
	ft := b.Float()
	batch, seqDim := opt.batchDim(), opt.dim("sequence")
	ids := b.Input("input_ids", idsType, batch, seqDim)
	d := tc.Hidden

	tok := b.Param("text_model.embeddings.token_embedding.weight", []int64{int64(vocab), int64(d)}, Init{Std: 0.5})
	pos := b.Param("text_model.embeddings.position_embedding.weight", []int64{int64(tc.MaxPositions), int64(d)}, Init{Std: 0.5})
	seq := b.Op("Shape", []string{ids}, AttrInt("start", 1), AttrInt("end", 2))
	h := b.Op("Add", []string{
		b.Op("Gather", []string{tok, ids}),
		b.Op("Slice", []string{pos, b.Ints(0), seq, b.Ints(0)}),
	})

	// Causal mask: 0 on and below the diagonal, maskValue above.
	p := tc.MaxPositions
	mvals := make([]float32, p*p)
	for i := 0; i < p; i++ {
		for j := i + 1; j < p; j++ {
			mvals[i*p+j] = maskValue
		}
	}
	maskAll := b.Tensor("const/causal_mask", []int64{int64(p), int64(p)}, mvals)
	mask := b.Op("Slice", []string{maskAll, b.Ints(0, 0), b.Op("Concat", []string{seq, seq}, AttrInt("axis", 0)), b.Ints(0, 1)})

	hidden := []string{h}
	for l := 0; l < tc.Layers; l++ {
		name := "text_model.encoder.layers." + strconv.Itoa(l)
		x := b.layerNorm(h, name+".layer_norm1", d, 1e-5)
		a := b.attention(x, x, attnSpec{
			name: name + ".self_attn", q: "q_proj", k: "k_proj", v: "v_proj", out: "out_proj",
			dim: d, ctxDim: d, heads: tc.Heads, qkvBias: true, mask: mask,
		})
		h = b.Op("Add", []string{h, a})
		x = b.layerNorm(h, name+".layer_norm2", d, 1e-5)
		x = b.linear(x, name+".mlp.fc1", d, tc.Intermediate, true, 1)
		if tc.activation() == "gelu" {
			x = b.gelu(x)
		} else {
			x = b.quickGELU(x)
		}
		x = b.linear(x, name+".mlp.fc2", tc.Intermediate, d, true, residualGain/math.Sqrt(0.5))
		h = b.Op("Add", []string{h, x})
		hidden = append(hidden, h)
	}
	last := b.layerNorm(h, "text_model.final_layer_norm", d, 1e-5)

	// The pooled output: last[i, argmax(ids[i])] with the ids cast to int32
	// as transformers does, or last[i, first position of EOSTokenID].
	ids32 := b.Op("Cast", []string{ids}, AttrInt("to", int64(onnxpb.Int32)))
	var idx string
	if tc.EOSTokenID == 0 || tc.EOSTokenID == 2 {
		idx = b.Op("ArgMax", []string{ids32}, AttrInt("axis", -1), AttrInt("keepdims", 1))
	} else {
		eos := b.intTensor32(int32(tc.EOSTokenID))
		isEOS := b.Op("Cast", []string{b.Op("Equal", []string{ids32, eos})}, AttrInt("to", int64(onnxpb.Int32)))
		idx = b.Op("ArgMax", []string{isEOS}, AttrInt("axis", -1), AttrInt("keepdims", 1))
	}
	pooled := b.Op("GatherND", []string{last, idx}, AttrInt("batch_dims", 1))

	if tc.ProjectionDim > 0 {
		embeds := b.linear(pooled, "text_projection", d, tc.ProjectionDim, false, 1)
		// optimum names the projection's dim "sequence_length" (a quirk of
		// its CLIPTextWithProjection config, kept as it writes it).
		var pd any = tc.ProjectionDim
		if opt.optimum() {
			pd = seqDim
		}
		b.Output(embeds, "text_embeds", ft, batch, pd)
		b.Output(last, "last_hidden_state", ft, batch, seqDim, d)
	} else {
		b.Output(last, "last_hidden_state", ft, batch, seqDim, d)
		b.Output(pooled, "pooler_output", ft, batch, d)
	}
	if opt.HiddenStates || opt.optimum() {
		for i, hs := range hidden {
			b.Output(hs, "hidden_states."+strconv.Itoa(i), ft, batch, seqDim, d)
		}
	}
	return b.finish()
}

// intTensor32 returns a 0-d int32 constant.
func (b *Builder) intTensor32(v int32) string {
	return b.shared(fmt.Sprintf("i32:%d", v), func(name string) string {
		b.g.Initializer = append(b.g.Initializer, &onnxpb.Tensor{Name: name, DataType: onnxpb.Int32, Int32Data: []int32{v}})
		return name
	})
}
