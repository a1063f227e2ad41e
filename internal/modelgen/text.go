package modelgen

import (
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

// BuildTextEncoder returns the CLIP text transformer: input_ids
// [batch, sequence] → last_hidden_state [batch, sequence, hidden] and
// pooler_output [batch, hidden] (the final hidden state at each row's
// argmax of input_ids, the end-of-text position, as CLIP does). vocab is
// the number of token embeddings when cfg.Text.Vocab is zero.
func BuildTextEncoder(cfg Config, opt Options, vocab int) (*onnxpb.Model, error) {
	b, err := newModelBuilder(cfg, opt, TextEncoder)
	if err != nil {
		return nil, err
	}
	tc := cfg.Text
	if tc.Vocab > 0 {
		vocab = tc.Vocab
	}
	idsType := opt.IDs
	if idsType == onnxpb.Undefined {
		idsType = onnxpb.Int32
	}
	ft := b.Float()
	batch := opt.batchDim()
	ids := b.Input("input_ids", idsType, batch, "sequence")
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

	for l := 0; l < tc.Layers; l++ {
		name := "text_model.encoder.layers." + strconv.Itoa(l)
		x := b.layerNorm(h, name+".layer_norm1", d, 1e-5)
		a := b.attention(x, x, attnSpec{
			name: name + ".self_attn", q: "q_proj", k: "k_proj", v: "v_proj", out: "out_proj",
			dim: d, ctxDim: d, heads: tc.Heads, qkvBias: true, mask: mask,
		})
		h = b.Op("Add", []string{h, a})
		x = b.layerNorm(h, name+".layer_norm2", d, 1e-5)
		x = b.quickGELU(b.linear(x, name+".mlp.fc1", d, tc.Intermediate, true, 1))
		x = b.linear(x, name+".mlp.fc2", tc.Intermediate, d, true, residualGain/math.Sqrt(0.5))
		h = b.Op("Add", []string{h, x})
	}
	last := b.layerNorm(h, "text_model.final_layer_norm", d, 1e-5)

	// pooler_output: last[i, argmax(ids[i])], with the ids cast to int32 as
	// transformers does.
	idx := b.Op("ArgMax", []string{b.Op("Cast", []string{ids}, AttrInt("to", int64(onnxpb.Int32)))}, AttrInt("axis", -1), AttrInt("keepdims", 1))
	pooled := b.Op("GatherND", []string{last, idx}, AttrInt("batch_dims", 1))

	b.Output(last, "last_hidden_state", ft, batch, "sequence", d)
	b.Output(pooled, "pooler_output", ft, batch, d)
	return b.finish()
}
