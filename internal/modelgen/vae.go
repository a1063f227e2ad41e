package modelgen

import (
	"fmt"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// BuildVAEDecoder returns the AutoencoderKL decoder (post_quant_conv
// included): latent_sample [batch, 4, height/8, width/8] → sample
// [batch, 3, height, width].
func BuildVAEDecoder(cfg Config, opt Options) (*onnxpb.Model, error) {
	return buildVAE(cfg, opt, func(b *Builder, opt Options, ft onnxpb.DataType, batch any) {
		v := cfg.VAE
		lc := v.LatentChannels
		z := b.Input("latent_sample", ft, batch, opt.channels(lc), opt.dim("latent_height"), opt.dim("latent_width"))
		z = b.conv(z, "post_quant_conv", lc, lc, 1, 1, 0, 1)
		n := len(v.BlockChannels)
		top := v.BlockChannels[n-1]
		h := b.conv(z, "decoder.conv_in", lc, top, 3, 1, 1, 1)
		h = b.vaeMid(h, "decoder.mid_block", top, opt.Attention)
		prev := top
		for i := 0; i < n; i++ {
			ch := v.BlockChannels[n-1-i]
			for j := 0; j <= v.LayersPerBlock; j++ {
				h = b.resnet(h, "", fmt.Sprintf("decoder.up_blocks.%d.resnets.%d", i, j), prev, ch, 0, 1e-6)
				prev = ch
			}
			if i < n-1 {
				h = b.upsample(h, fmt.Sprintf("decoder.up_blocks.%d.upsamplers.0.conv", i), ch)
			}
		}
		ch0 := v.BlockChannels[0]
		h = b.silu(b.groupNorm(h, "decoder.conv_norm_out", ch0, 32, 1e-6))
		out := b.conv(h, "decoder.conv_out", ch0, 3, 3, 1, 1, 1)
		b.Output(out, "sample", ft, batch, 3, "height", "width")
	})
}

// BuildVAEEncoder returns the AutoencoderKL encoder with quant_conv: sample
// [batch, 3, height, width] → latent_sample [batch, 4, height/8, width/8],
// the posterior mean (deterministic), or with opt.LatentParameters and in
// the Optimum layout latent_parameters [batch, 8, height/8, width/8]
// (mean ‖ logvar).
func BuildVAEEncoder(cfg Config, opt Options) (*onnxpb.Model, error) {
	return buildVAE(cfg, opt, func(b *Builder, opt Options, ft onnxpb.DataType, batch any) {
		v := cfg.VAE
		lc := v.LatentChannels
		x := b.Input("sample", ft, batch, opt.channels(3), "height", "width")
		ch0 := v.BlockChannels[0]
		h := b.conv(x, "encoder.conv_in", 3, ch0, 3, 1, 1, 1)
		prev := ch0
		n := len(v.BlockChannels)
		for i, ch := range v.BlockChannels {
			for j := 0; j < v.LayersPerBlock; j++ {
				h = b.resnet(h, "", fmt.Sprintf("encoder.down_blocks.%d.resnets.%d", i, j), prev, ch, 0, 1e-6)
				prev = ch
			}
			if i < n-1 {
				// diffusers' Downsample2D(padding=0): pad right and bottom by one.
				h = b.convPads(h, fmt.Sprintf("encoder.down_blocks.%d.downsamplers.0.conv", i), ch, ch, 3, 2, []int64{0, 0, 1, 1}, 1)
			}
		}
		top := v.BlockChannels[n-1]
		h = b.vaeMid(h, "encoder.mid_block", top, opt.Attention)
		h = b.silu(b.groupNorm(h, "encoder.conv_norm_out", top, 32, 1e-6))
		h = b.conv(h, "encoder.conv_out", top, 2*lc, 3, 1, 1, 1)
		moments := b.conv(h, "quant_conv", 2*lc, 2*lc, 1, 1, 0, 1)
		if opt.LatentParameters || opt.optimum() {
			b.Output(moments, "latent_parameters", ft, batch, 2*lc, opt.dim("latent_height"), opt.dim("latent_width"))
		} else {
			mean := b.Op("Slice", []string{moments, b.Ints(0), b.Ints(int64(lc)), b.Ints(1)})
			b.Output(mean, "latent_sample", ft, batch, lc, opt.dim("latent_height"), opt.dim("latent_width"))
		}
	})
}

// buildVAE builds one half of the autoencoder: it checks cfg and opt,
// starts the builder, and has half add the graph, given the resolved
// options, the float type and the batch dimension.
func buildVAE(cfg Config, opt Options, half func(b *Builder, opt Options, ft onnxpb.DataType, batch any)) (*onnxpb.Model, error) {
	opt = opt.resolve(cfg)
	b, err := newModelBuilder(cfg, opt, VAE)
	if err != nil {
		return nil, err
	}
	half(b, opt, b.Float(), opt.batchDim())
	return b.finish()
}

// vaeMid is UNetMidBlock2D: ResNet, single-head self-attention with
// GroupNorm and residual, ResNet.
func (b *Builder) vaeMid(h, name string, c int, form AttentionForm) string {
	h = b.resnet(h, "", name+".resnets.0", c, c, 0, 1e-6)
	an := name + ".attentions.0"
	g := b.groupNorm(h, an+".group_norm", c, 32, 1e-6)
	seq, nhwc := b.toSequence(g, c)
	a := b.attention(seq, seq, attnSpec{
		name: an, q: "to_q", k: "to_k", v: "to_v", out: "to_out.0",
		dim: c, ctxDim: c, heads: 1, qkvBias: true, form: form,
	})
	h = b.Op("Add", []string{b.fromSequence(a, nhwc), h})
	return b.resnet(h, "", name+".resnets.1", c, c, 0, 1e-6)
}

// CountParams returns the number of parameter elements in m: the sum of the
// sizes of its initializers, leaving out the builder's small constants
// (named "const/…"). It reads only dims, never tensor data.
func CountParams(m *onnxpb.Model) int64 {
	var n int64
	for _, t := range m.Graph.Initializer {
		if len(t.Name) >= 6 && t.Name[:6] == "const/" {
			continue
		}
		n += t.NumElements()
	}
	return n
}
