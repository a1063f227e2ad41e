package modelgen

import (
	"fmt"
	"math"
	"strconv"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// BuildUNet returns the UNet2DConditionModel: sample [batch, in_channels,
// height, width], timestep, encoder_hidden_states [batch, sequence,
// cross_dim], then text_embeds [batch, n] and time_ids [batch, 6] for a
// text_time UNet (SDXL) and timestep_cond [batch, time_cond_proj_dim] for
// an LCM UNet → out_sample [batch, out_channels, height, width]. height and
// width must be multiples of 2^(levels-1).
func BuildUNet(cfg Config, opt Options) (*onnxpb.Model, error) {
	opt = opt.resolve(cfg)
	b, err := newModelBuilder(cfg, opt, UNet)
	if err != nil {
		return nil, err
	}
	u := cfg.UNet
	crossDim := cfg.crossDim()
	ft := b.Float()
	batch := opt.batchDim()
	sample := b.Input("sample", ft, batch, opt.channels(u.InChannels), "height", "width")
	tsType := opt.Timestep
	if tsType == onnxpb.Undefined {
		tsType = ft
		if opt.optimum() {
			tsType = onnxpb.Int64
		}
	}
	var timestep string
	switch opt.TimestepShape {
	case TimestepScalar:
		timestep = b.Input("timestep", tsType)
	case TimestepOne:
		timestep = b.Input("timestep", tsType, 1)
	default:
		timestep = b.Input("timestep", tsType, opt.dim("steps"))
	}
	ehs := b.Input("encoder_hidden_states", ft, batch, opt.dim("sequence"), crossDim)
	var textEmbeds, timeIDs, cond string
	if u.AdditionEmbed == "text_time" {
		textEmbeds = b.Input("text_embeds", ft, batch, u.TextEmbedsDim())
		timeIDs = b.Input("time_ids", ft, batch, u.timeIDs())
	}
	if u.TimeCondProjDim > 0 {
		cond = b.Input("timestep_cond", ft, batch, u.TimeCondProjDim)
	}

	ch0 := u.BlockChannels[0]
	tdim := 4 * ch0
	temb := b.timeEmbedding(sample, timestep, tsType, ch0, tdim, cond, u.TimeCondProjDim)
	if textEmbeds != "" {
		temb = b.Op("Add", []string{temb, b.addTimeEmbedding(textEmbeds, timeIDs, u, tdim)})
	}
	tact := b.silu(temb) // every ResNet's time_emb_proj input

	tf := func(h, name string, level, ch int) string {
		return b.transformer2D(h, ehs, name, transformerSpec{
			c: ch, heads: u.heads(level), ctxDim: crossDim, layers: u.transformerLayers(level),
			linear: u.LinearProjection, upcast: u.UpcastAttention, form: opt.Attention,
		})
	}
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
				h = tf(h, fmt.Sprintf("%s.attentions.%d", name, j), i, ch)
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
	h = tf(h, "mid_block.attentions.0", last, top)
	h = b.resnet(h, tact, "mid_block.resnets.1", top, top, tdim, 1e-5)

	prev = top
	for i := range u.BlockChannels {
		level := last - i
		ch := u.BlockChannels[level]
		for j := 0; j <= u.LayersPerBlock; j++ {
			s := skips[len(skips)-1]
			skips = skips[:len(skips)-1]
			h = b.Op("Concat", []string{h, s.name}, AttrInt("axis", 1))
			name := fmt.Sprintf("up_blocks.%d", i)
			h = b.resnet(h, tact, fmt.Sprintf("%s.resnets.%d", name, j), prev+s.ch, ch, tdim, 1e-5)
			prev = ch
			if u.CrossAttention[level] {
				h = tf(h, fmt.Sprintf("%s.attentions.%d", name, j), level, ch)
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
// Linear), with the LCM guidance condition cond (or "") projected by
// cond_proj and added before linear_1. The sinusoids are computed in
// float32.
func (b *Builder) timeEmbedding(sample, timestep string, tsType onnxpb.DataType, ch0, tdim int, cond string, condDim int) string {
	t := timestep
	if tsType != onnxpb.Float {
		t = b.Op("Cast", []string{t}, AttrInt("to", int64(onnxpb.Float)))
	}
	t = b.Op("Reshape", []string{t, b.Ints(-1)})
	t = b.Op("Expand", []string{t, b.Op("Shape", []string{sample}, AttrInt("start", 0), AttrInt("end", 1))})
	emb := b.sinusoids(t, "const/time_proj_freqs", ch0)
	if b.Float() != onnxpb.Float {
		emb = b.Op("Cast", []string{emb}, AttrInt("to", int64(b.Float())))
	}
	if cond != "" {
		emb = b.Op("Add", []string{emb, b.linear(cond, "time_embedding.cond_proj", condDim, ch0, false, 1)})
	}
	emb = b.linear(emb, "time_embedding.linear_1", ch0, tdim, true, 1/math.Sqrt(0.5))
	return b.linear(b.silu(emb), "time_embedding.linear_2", tdim, tdim, true, 1)
}

// sinusoids returns diffusers' get_timestep_embedding(t, dim,
// flip_sin_to_cos=True, downscale_freq_shift=0) of the float32 vector t
// [n]: [n, dim] = cos ‖ sin of t·exp(-ln(10000)·i/(dim/2)), the frequencies
// rounded as torch computes them in float32.
func (b *Builder) sinusoids(t, name string, dim int) string {
	half := dim / 2
	freqs := make([]float32, half)
	for i := range freqs {
		e := float32(-math.Log(10000)) * float32(i)
		e /= float32(half)
		freqs[i] = float32(math.Exp(float64(e)))
	}
	f, ok := b.consts[name]
	if !ok {
		f = b.float32Tensor(name, []int64{1, int64(half)}, freqs)
		b.consts[name] = f
	}
	arg := b.Op("Mul", []string{b.Op("Unsqueeze", []string{t, b.Ints(1)}), f})
	return b.Op("Concat", []string{b.Op("Cos", []string{arg}), b.Op("Sin", []string{arg})}, AttrInt("axis", 1))
}

// addTimeEmbedding is SDXL's text_time additional embedding:
// add_embedding(text_embeds ‖ flatten(sinusoids(time_ids))), the
// sinusoids of addition_time_embed_dim per time id.
func (b *Builder) addTimeEmbedding(textEmbeds, timeIDs string, u UNetConfig, tdim int) string {
	ids := timeIDs
	if b.Float() != onnxpb.Float {
		ids = b.Op("Cast", []string{ids}, AttrInt("to", int64(onnxpb.Float)))
	}
	emb := b.sinusoids(b.Op("Reshape", []string{ids, b.Ints(-1)}), "const/add_time_proj_freqs", u.AdditionTimeEmbedDim)
	emb = b.Op("Reshape", []string{emb, b.Ints(-1, int64(u.timeIDs()*u.AdditionTimeEmbedDim))})
	if b.Float() != onnxpb.Float {
		emb = b.Op("Cast", []string{emb}, AttrInt("to", int64(b.Float())))
	}
	x := b.Op("Concat", []string{textEmbeds, emb}, AttrInt("axis", 1))
	x = b.linear(x, "add_embedding.linear_1", u.ProjectionInputDim, tdim, true, 1/math.Sqrt(2))
	return b.linear(b.silu(x), "add_embedding.linear_2", tdim, tdim, true, 1)
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
	r := b.Op("Resize", []string{x, "", b.upsampleScales()},
		AttrString("mode", "nearest"),
		AttrString("coordinate_transformation_mode", "asymmetric"),
		AttrString("nearest_mode", "floor"))
	return b.conv(r, name, ch, ch, 3, 1, 1, 1)
}

// upsampleScales returns the Resize scales of a ×2 upsampling of NCHW.
func (b *Builder) upsampleScales() string {
	scales, ok := b.consts["const/upsample_scales"]
	if !ok {
		scales = b.float32Tensor("const/upsample_scales", []int64{4}, []float32{1, 1, 2, 2})
		b.consts["const/upsample_scales"] = scales
	}
	return scales
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

// transformerSpec describes one Transformer2DModel.
type transformerSpec struct {
	c, heads, ctxDim, layers int
	linear, upcast           bool // linear proj_in/proj_out; float32 attention scores
	form                     AttentionForm
}

// transformer2D is diffusers' Transformer2DModel: GroupNorm (eps 1e-6),
// proj_in (1×1 conv, or Linear after flattening when s.linear), s.layers
// BasicTransformerBlocks (self-attention, cross-attention to ctx, GEGLU
// feed-forward, each after a LayerNorm, with residuals), proj_out and the
// outer residual.
func (b *Builder) transformer2D(x, ctx, name string, s transformerSpec) string {
	c := s.c
	h := b.groupNorm(x, name+".norm", c, 32, 1e-6)
	var seq, nhwc string
	if s.linear {
		seq, nhwc = b.toSequence(h, c)
		seq = b.linear(seq, name+".proj_in", c, c, true, 1)
	} else {
		h = b.conv(h, name+".proj_in", c, c, 1, 1, 0, 1)
		seq, nhwc = b.toSequence(h, c)
	}
	for l := 0; l < s.layers; l++ {
		bn := name + ".transformer_blocks." + strconv.Itoa(l)
		n := b.layerNorm(seq, bn+".norm1", c, 1e-5)
		seq = b.Op("Add", []string{seq, b.attention(n, n, attnSpec{
			name: bn + ".attn1", q: "to_q", k: "to_k", v: "to_v", out: "to_out.0",
			dim: c, ctxDim: c, heads: s.heads, form: s.form, upcast: s.upcast,
		})})
		n = b.layerNorm(seq, bn+".norm2", c, 1e-5)
		seq = b.Op("Add", []string{seq, b.attention(n, ctx, attnSpec{
			name: bn + ".attn2", q: "to_q", k: "to_k", v: "to_v", out: "to_out.0",
			dim: c, ctxDim: s.ctxDim, heads: s.heads, form: s.form, upcast: s.upcast, outGain: crossAttnGain,
		})})
		n = b.layerNorm(seq, bn+".norm3", c, 1e-5)
		p := b.linear(n, bn+".ff.net.0.proj", c, 8*c, true, 1)
		hidden := b.Op("Slice", []string{p, b.Ints(0), b.Ints(int64(4 * c)), b.Ints(-1)})
		gate := b.Op("Slice", []string{p, b.Ints(int64(4 * c)), b.Ints(int64(8 * c)), b.Ints(-1)})
		ff := b.linear(b.Op("Mul", []string{hidden, b.gelu(gate)}), bn+".ff.net.2", 4*c, c, true, residualGain)
		seq = b.Op("Add", []string{seq, ff})
	}
	var out string
	if s.linear {
		out = b.fromSequence(b.linear(seq, name+".proj_out", c, c, true, residualGain), nhwc)
	} else {
		out = b.conv(b.fromSequence(seq, nhwc), name+".proj_out", c, c, 1, 1, 0, residualGain)
	}
	return b.Op("Add", []string{out, x})
}
