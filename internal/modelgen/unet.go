package modelgen

import (
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// BuildUNet returns the UNet2DConditionModel: sample [batch, 4, height,
// width], timestep and encoder_hidden_states [batch, sequence, cross_dim] →
// out_sample [batch, 4, height, width]. height and width must be multiples
// of 2^(levels-1).
func BuildUNet(cfg Config, opt Options) (*onnxpb.Model, error) {
	b, err := newModelBuilder(cfg, opt, UNet)
	if err != nil {
		return nil, err
	}
	u := cfg.UNet
	crossDim := u.CrossDim
	if crossDim == 0 {
		crossDim = cfg.Text.Hidden
	}
	ft := b.Float()
	batch := opt.batchDim()
	sample := b.Input("sample", ft, batch, u.InChannels, "height", "width")
	tsType := opt.Timestep
	if tsType == onnxpb.Undefined {
		tsType = ft
	}
	var timestep string
	switch opt.TimestepShape {
	case TimestepScalar:
		timestep = b.Input("timestep", tsType)
	case TimestepOne:
		timestep = b.Input("timestep", tsType, 1)
	default:
		timestep = b.Input("timestep", tsType, batch)
	}
	ehs := b.Input("encoder_hidden_states", ft, batch, "sequence", crossDim)

	ch0 := u.BlockChannels[0]
	tdim := 4 * ch0
	temb := b.timeEmbedding(sample, timestep, tsType, ch0, tdim)
	tact := b.silu(temb) // every ResNet's time_emb_proj input

	type skip struct {
		name string
		ch   int
	}
	h := b.conv(sample, "conv_in", u.InChannels, ch0, 3, 1, 1, 1)
	skips := []skip{{h, ch0}}
	prev := ch0
	last := len(u.BlockChannels) - 1
	for i, ch := range u.BlockChannels {
		for j := 0; j < u.LayersPerBlock; j++ {
			name := fmt.Sprintf("down_blocks.%d", i)
			h = b.resnet(h, tact, fmt.Sprintf("%s.resnets.%d", name, j), prev, ch, tdim, 1e-5)
			prev = ch
			if u.CrossAttention[i] {
				h = b.transformer2D(h, ehs, fmt.Sprintf("%s.attentions.%d", name, j), ch, u.Heads, crossDim, opt.Attention)
			}
			skips = append(skips, skip{h, ch})
		}
		if i < last {
			h = b.conv(h, fmt.Sprintf("down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3, 2, 1, 1)
			skips = append(skips, skip{h, ch})
		}
	}

	top := u.BlockChannels[last]
	h = b.resnet(h, tact, "mid_block.resnets.0", top, top, tdim, 1e-5)
	h = b.transformer2D(h, ehs, "mid_block.attentions.0", top, u.Heads, crossDim, opt.Attention)
	h = b.resnet(h, tact, "mid_block.resnets.1", top, top, tdim, 1e-5)

	prev = top
	for i := range u.BlockChannels {
		ch := u.BlockChannels[last-i]
		cross := u.CrossAttention[last-i]
		for j := 0; j <= u.LayersPerBlock; j++ {
			s := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			h = b.Op("Concat", []string{h, s.name}, AttrInt("axis", 1))
			name := fmt.Sprintf("up_blocks.%d", i)
			h = b.resnet(h, tact, fmt.Sprintf("%s.resnets.%d", name, j), prev+s.ch, ch, tdim, 1e-5)
			prev = ch
			if cross {
				h = b.transformer2D(h, ehs, fmt.Sprintf("%s.attentions.%d", name, j), ch, u.Heads, crossDim, opt.Attention)
			}
		}
		if i < last {
			h = b.upsample(h, fmt.Sprintf("up_blocks.%d.upsamplers.0.conv", i), ch)
		}
	}

	h = b.silu(b.groupNorm(h, "conv_norm_out", ch0, 32, 1e-5))
	// Gain 1/√E[silu(z)²] ≈ 1.68 makes the noise prediction roughly unit-scale.
	out := b.conv(h, "conv_out", ch0, u.OutChannels, 3, 1, 1, 1.68)
	b.Output(out, "out_sample", ft, batch, u.OutChannels, "height", "width")
	return b.finish()
}

// crossAttnGain keeps the text conditioning's effect on the noise
// prediction small, as in trained models, so that classifier-free guidance
// (which amplifies the conditional-unconditional difference 7.5×) does not
// blow the latents up.
const crossAttnGain = 0.1

// timeEmbedding is diffusers' Timesteps(flip_sin_to_cos=True,
// downscale_freq_shift=0) followed by TimestepEmbedding (Linear, SiLU,
// Linear). The sinusoids are computed in float32.
func (b *Builder) timeEmbedding(sample, timestep string, tsType onnxpb.DataType, ch0, tdim int) string {
	t := timestep
	if tsType != onnxpb.Float {
		t = b.Op("Cast", []string{t}, AttrInt("to", int64(onnxpb.Float)))
	}
	t = b.Op("Reshape", []string{t, b.Ints(-1)})
	t = b.Op("Expand", []string{t, b.Op("Shape", []string{sample}, AttrInt("start", 0), AttrInt("end", 1))})
	half := ch0 / 2
	freqs := make([]float32, half)
	for i := range freqs {
		freqs[i] = float32(math.Exp(-math.Log(10000) * float64(i) / float64(half)))
	}
	f := b.float32Tensor("const/time_proj_freqs", []int64{1, int64(half)}, freqs)
	arg := b.Op("Mul", []string{b.Op("Unsqueeze", []string{t, b.Ints(1)}), f})
	emb := b.Op("Concat", []string{b.Op("Cos", []string{arg}), b.Op("Sin", []string{arg})}, AttrInt("axis", 1))
	if b.Float() != onnxpb.Float {
		emb = b.Op("Cast", []string{emb}, AttrInt("to", int64(b.Float())))
	}
	emb = b.linear(emb, "time_embedding.linear_1", ch0, tdim, true, 1/math.Sqrt(0.5))
	return b.linear(b.silu(emb), "time_embedding.linear_2", tdim, tdim, true, 1)
}

// float32Tensor adds a float32 constant whatever the builder's float type.
func (b *Builder) float32Tensor(name string, shape []int64, vals []float32) string {
	saved := b.float
	b.float = onnxpb.Float
	defer func() { b.float = saved }()
	return b.Tensor(name, shape, vals)
}

// resnet is diffusers' ResnetBlock2D (GroupNorm 32, SiLU, conv, time
// embedding add, GroupNorm, SiLU, conv, 1×1 shortcut when channels change).
// tact is the SiLU of the time embedding, or "" for none (the VAE).
func (b *Builder) resnet(x, tact, name string, in, out, tdim int, eps float32) string {
	h := b.silu(b.groupNorm(x, name+".norm1", in, 32, eps))
	h = b.conv(h, name+".conv1", in, out, 3, 1, 1, 1)
	if tact != "" {
		t := b.linear(tact, name+".time_emb_proj", tdim, out, true, 1)
		h = b.Op("Add", []string{h, b.Op("Unsqueeze", []string{t, b.Ints(2, 3)})})
	}
	h = b.silu(b.groupNorm(h, name+".norm2", out, 32, eps))
	h = b.conv(h, name+".conv2", out, out, 3, 1, 1, residualGain)
	if in != out {
		x = b.conv(x, name+".conv_shortcut", in, out, 1, 1, 0, 1)
	}
	return b.Op("Add", []string{x, h})
}

// upsample is nearest-neighbour ×2 followed by a 3×3 conv.
func (b *Builder) upsample(x, name string, ch int) string {
	scales, ok := b.consts["const/upsample_scales"]
	if !ok {
		scales = b.float32Tensor("const/upsample_scales", []int64{4}, []float32{1, 1, 2, 2})
		b.consts["const/upsample_scales"] = scales
	}
	r := b.Op("Resize", []string{x, "", scales},
		AttrString("mode", "nearest"),
		AttrString("coordinate_transformation_mode", "asymmetric"),
		AttrString("nearest_mode", "floor"))
	return b.conv(r, name, ch, ch, 3, 1, 1, 1)
}

// toSequence turns [b, c, h, w] into [b, h·w, c]; it also returns the
// [b, h, w, c] tensor whose shape fromSequence restores.
func (b *Builder) toSequence(x string, c int) (seq, nhwc string) {
	nhwc = b.Op("Transpose", []string{x}, AttrInts("perm", 0, 2, 3, 1))
	return b.Op("Reshape", []string{nhwc, b.Ints(0, -1, int64(c))}), nhwc
}

func (b *Builder) fromSequence(seq, nhwc string) string {
	return b.Op("Transpose", []string{b.Op("Reshape", []string{seq, b.Op("Shape", []string{nhwc})})}, AttrInts("perm", 0, 3, 1, 2))
}

// transformer2D is diffusers' Transformer2DModel with one
// BasicTransformerBlock: GroupNorm, 1×1 proj_in, self-attention,
// cross-attention to ctx, GEGLU feed-forward (each after a LayerNorm, with
// residuals), 1×1 proj_out and the outer residual.
func (b *Builder) transformer2D(x, ctx, name string, c, heads, ctxDim int, form AttentionForm) string {
	h := b.groupNorm(x, name+".norm", c, 32, 1e-6)
	h = b.conv(h, name+".proj_in", c, c, 1, 1, 0, 1)
	seq, nhwc := b.toSequence(h, c)
	bn := name + ".transformer_blocks.0"
	n := b.layerNorm(seq, bn+".norm1", c, 1e-5)
	seq = b.Op("Add", []string{seq, b.attention(n, n, attnSpec{
		name: bn + ".attn1", q: "to_q", k: "to_k", v: "to_v", out: "to_out.0",
		dim: c, ctxDim: c, heads: heads, form: form,
	})})
	n = b.layerNorm(seq, bn+".norm2", c, 1e-5)
	seq = b.Op("Add", []string{seq, b.attention(n, ctx, attnSpec{
		name: bn + ".attn2", q: "to_q", k: "to_k", v: "to_v", out: "to_out.0",
		dim: c, ctxDim: ctxDim, heads: heads, form: form, outGain: crossAttnGain,
	})})
	n = b.layerNorm(seq, bn+".norm3", c, 1e-5)
	p := b.linear(n, bn+".ff.net.0.proj", c, 8*c, true, 1)
	hidden := b.Op("Slice", []string{p, b.Ints(0), b.Ints(int64(4 * c)), b.Ints(-1)})
	gate := b.Op("Slice", []string{p, b.Ints(int64(4 * c)), b.Ints(int64(8 * c)), b.Ints(-1)})
	ff := b.linear(b.Op("Mul", []string{hidden, b.gelu(gate)}), bn+".ff.net.2", 4*c, c, true, residualGain)
	seq = b.Op("Add", []string{seq, ff})
	out := b.conv(b.fromSequence(seq, nhwc), name+".proj_out", c, c, 1, 1, 0, residualGain)
	return b.Op("Add", []string{out, x})
}
