package ckpt

import (
	"fmt"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// TensorSpec names one tensor of a file layout, with its shape and dtype.
type TensorSpec struct {
	Name  string
	Shape []int64
	DType safetensors.DType
}

// Published returns the architecture of a released model of family f:
// SD 1.5 (and, with inpainting, its inpainting model), SD 2.1 (768-v),
// SDXL base 1.0 or the SDXL refiner.
func Published(f Family, inpainting bool) (*Arch, error) {
	clipL := TextArch{Component: TextEncoder, TextConfig: modelgen.TextConfig{Vocab: 49408, Hidden: 768, Layers: 12, Heads: 12, Intermediate: 3072, MaxPositions: 77, Activation: "quick_gelu"}, LayerNormEps: 1e-5, PadToken: "<|endoftext|>"}
	bigG := TextArch{Component: TextEncoder2, TextConfig: modelgen.TextConfig{Vocab: 49408, Hidden: 1280, Layers: 32, Heads: 20, Intermediate: 5120, MaxPositions: 77, Activation: "gelu", ProjectionDim: 1280}, LayerNormEps: 1e-5, PadToken: "!"}
	vae := VAEArch{InChannels: 3, OutChannels: 3, LatentChannels: 4, BlockChannels: []int{128, 256, 512, 512}, LayersPerBlock: 2, ScalingFactor: 0.18215}
	in := 4
	if inpainting {
		in = 9
	}
	a := &Arch{Family: f, Inpainting: inpainting, Prediction: "epsilon", VAE: vae}
	switch f {
	case SD1:
		a.ImageSize = 512
		a.UNet = UNetArch{InChannels: in, OutChannels: 4, BlockChannels: []int{320, 640, 1280, 1280}, LayersPerBlock: 2,
			CrossAttention: []bool{true, true, true, false}, TransformerDepth: []int{1, 1, 1, 0}, MidDepth: 1,
			Heads: []int{8, 8, 8, 8}, CrossAttentionDim: 768, TimeEmbedDim: 1280}
		a.Text = []TextArch{clipL}
	case SD2:
		a.ImageSize, a.Prediction = 768, "v_prediction"
		if inpainting {
			a.ImageSize, a.Prediction = 512, "epsilon"
		}
		a.UNet = UNetArch{InChannels: in, OutChannels: 4, BlockChannels: []int{320, 640, 1280, 1280}, LayersPerBlock: 2,
			CrossAttention: []bool{true, true, true, false}, TransformerDepth: []int{1, 1, 1, 0}, MidDepth: 1,
			Heads: []int{5, 10, 20, 20}, CrossAttentionDim: 1024, LinearProjection: true, UpcastAttention: true, TimeEmbedDim: 1280}
		a.Text = []TextArch{{Component: TextEncoder, TextConfig: modelgen.TextConfig{Vocab: 49408, Hidden: 1024, Layers: 23, Heads: 16, Intermediate: 4096, MaxPositions: 77, Activation: "gelu"}, LayerNormEps: 1e-5, PadToken: "!"}}
	case SDXL:
		a.ImageSize = 1024
		a.VAE.ScalingFactor, a.VAE.ForceUpcast = 0.13025, true
		a.UNet = UNetArch{InChannels: in, OutChannels: 4, BlockChannels: []int{320, 640, 1280}, LayersPerBlock: 2,
			CrossAttention: []bool{false, true, true}, TransformerDepth: []int{0, 2, 10}, MidDepth: 10,
			Heads: []int{5, 10, 20}, CrossAttentionDim: 2048, LinearProjection: true, TimeEmbedDim: 1280,
			AdditionEmbedInputDim: 2816, AdditionTimeEmbedDim: 256}
		a.Text = []TextArch{clipL, bigG}
	case SDXLRefiner:
		if inpainting {
			return nil, fmt.Errorf("ckpt: there is no SDXL refiner inpainting model")
		}
		a.ImageSize = 1024
		a.VAE.ScalingFactor, a.VAE.ForceUpcast = 0.13025, true
		a.UNet = UNetArch{InChannels: 4, OutChannels: 4, BlockChannels: []int{384, 768, 1536, 1536}, LayersPerBlock: 2,
			CrossAttention: []bool{false, true, true, false}, TransformerDepth: []int{0, 4, 4, 0}, MidDepth: 4,
			Heads: []int{6, 12, 24, 24}, CrossAttentionDim: 1280, LinearProjection: true, TimeEmbedDim: 1536,
			AdditionEmbedInputDim: 2560, AdditionTimeEmbedDim: 256}
		a.Text = []TextArch{bigG}
	default:
		return nil, fmt.Errorf("ckpt: unknown family %q", f)
	}
	return a, nil
}

// OriginalLayout returns the tensors a checkpoint of architecture a holds
// in the original (LDM) layout, built from the structure of the original
// modules (ldm's UNetModel, Encoder/Decoder, FrozenCLIPEmbedder,
// FrozenOpenCLIPEmbedder): names, shapes and, for weights, dtype float.
// With extras it adds the entries a released SD 1.x/2.x file carries
// besides the model (the DDPM schedule buffers, model_ema.decay and
// num_updates, CLIP's position_ids, OpenCLIP's logit_scale).
func OriginalLayout(a *Arch, float safetensors.DType, extras bool) []TensorSpec {
	var out []TensorSpec
	add := func(name string, shape ...int64) {
		out = append(out, TensorSpec{Name: name, Shape: shape, DType: float})
	}
	u := a.UNet
	layoutUNet(add, unetPrefix, u)
	layoutVAE(add, vaePrefix, a.VAE)
	for _, t := range a.Text {
		switch {
		case a.Family == SD1:
			layoutCLIP(add, clipPrefix+"text_model.", t)
			if extras {
				out = append(out, TensorSpec{Name: clipPrefix + "text_model.embeddings.position_ids", Shape: []int64{1, int64(t.MaxPositions)}, DType: safetensors.I64})
			}
		case a.Family == SD2:
			t.Layers++ // the file holds the last layer, which SD 2.x does not use
			t.ProjectionDim = t.Hidden
			layoutOpenCLIP(add, openCLIPSD2, t)
			if extras {
				add(openCLIPSD2 + "logit_scale")
			}
		case t.Component == TextEncoder:
			layoutCLIP(add, sdxlCLIP+"text_model.", t)
		default:
			p := sdxlOpenCLIP
			if a.Family == SDXLRefiner {
				p = refinerCLIP
			}
			layoutOpenCLIP(add, p, t)
			if extras {
				add(p + "logit_scale")
			}
		}
	}
	if extras && (a.Family == SD1 || a.Family == SD2) {
		for _, n := range []string{"alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
			"posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "posterior_variance",
			"sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod"} {
			add(n, 1000)
		}
		out = append(out, TensorSpec{Name: "model_ema.decay", Shape: []int64{}, DType: safetensors.F32},
			TensorSpec{Name: "model_ema.num_updates", Shape: []int64{}, DType: safetensors.I32})
	}
	slices.SortFunc(out, func(x, y TensorSpec) int { return strings.Compare(x.Name, y.Name) })
	return out
}

type addFunc func(name string, shape ...int64)

func layoutConv(add addFunc, p string, in, out, k int) {
	add(p+"weight", int64(out), int64(in), int64(k), int64(k))
	add(p+"bias", int64(out))
}

func layoutLinear(add addFunc, p string, in, out int, bias bool) {
	add(p+"weight", int64(out), int64(in))
	if bias {
		add(p+"bias", int64(out))
	}
}

func layoutNorm(add addFunc, p string, c int) {
	add(p+"weight", int64(c))
	add(p+"bias", int64(c))
}

// layoutResBlock is ldm's openaimodel.ResBlock.
func layoutResBlock(add addFunc, p string, in, out, temb int) {
	layoutNorm(add, p+"in_layers.0.", in)
	layoutConv(add, p+"in_layers.2.", in, out, 3)
	layoutLinear(add, p+"emb_layers.1.", temb, out, true)
	layoutNorm(add, p+"out_layers.0.", out)
	layoutConv(add, p+"out_layers.3.", out, out, 3)
	if in != out {
		layoutConv(add, p+"skip_connection.", in, out, 1)
	}
}

// layoutTransformer is ldm's attention.SpatialTransformer.
func layoutTransformer(add addFunc, p string, c, depth, ctx int, linear bool) {
	layoutNorm(add, p+"norm.", c)
	proj := func(q string) {
		if linear {
			layoutLinear(add, q, c, c, true)
		} else {
			layoutConv(add, q, c, c, 1)
		}
	}
	proj(p + "proj_in.")
	for d := range depth {
		b := fmt.Sprintf("%stransformer_blocks.%d.", p, d)
		for _, attn := range []string{"attn1.", "attn2."} {
			kv := c
			if attn == "attn2." {
				kv = ctx
			}
			layoutLinear(add, b+attn+"to_q.", c, c, false)
			layoutLinear(add, b+attn+"to_k.", kv, c, false)
			layoutLinear(add, b+attn+"to_v.", kv, c, false)
			layoutLinear(add, b+attn+"to_out.0.", c, c, true)
		}
		layoutLinear(add, b+"ff.net.0.proj.", c, 8*c, true) // GEGLU: 2 × 4c
		layoutLinear(add, b+"ff.net.2.", 4*c, c, true)
		for _, n := range []string{"norm1.", "norm2.", "norm3."} {
			layoutNorm(add, b+n, c)
		}
	}
	proj(p + "proj_out.")
}

// layoutUNet is ldm's openaimodel.UNetModel.
func layoutUNet(add addFunc, p string, u UNetArch) {
	c0, temb := u.BlockChannels[0], u.TimeEmbedDim
	layoutLinear(add, p+"time_embed.0.", c0, temb, true)
	layoutLinear(add, p+"time_embed.2.", temb, temb, true)
	if u.AdditionEmbedInputDim > 0 {
		layoutLinear(add, p+"label_emb.0.0.", u.AdditionEmbedInputDim, temb, true)
		layoutLinear(add, p+"label_emb.0.2.", temb, temb, true)
	}
	layoutConv(add, p+"input_blocks.0.0.", u.InChannels, c0, 3)
	chans := []int{c0}
	ch, idx := c0, 1
	levels := len(u.BlockChannels)
	for l, c := range u.BlockChannels {
		for range u.LayersPerBlock {
			layoutResBlock(add, fmt.Sprintf("%sinput_blocks.%d.0.", p, idx), ch, c, temb)
			if u.CrossAttention[l] {
				layoutTransformer(add, fmt.Sprintf("%sinput_blocks.%d.1.", p, idx), c, u.TransformerDepth[l], u.CrossAttentionDim, u.LinearProjection)
			}
			ch = c
			chans = append(chans, ch)
			idx++
		}
		if l < levels-1 {
			layoutConv(add, fmt.Sprintf("%sinput_blocks.%d.0.op.", p, idx), ch, ch, 3)
			chans = append(chans, ch)
			idx++
		}
	}
	layoutResBlock(add, p+"middle_block.0.", ch, ch, temb)
	layoutTransformer(add, p+"middle_block.1.", ch, u.MidDepth, u.CrossAttentionDim, u.LinearProjection)
	layoutResBlock(add, p+"middle_block.2.", ch, ch, temb)
	idx = 0
	for l := levels - 1; l >= 0; l-- {
		c := u.BlockChannels[l]
		for j := range u.LayersPerBlock + 1 {
			skip := chans[len(chans)-1]
			chans = chans[:len(chans)-1]
			b := fmt.Sprintf("%soutput_blocks.%d.", p, idx)
			layoutResBlock(add, b+"0.", ch+skip, c, temb)
			ch = c
			sub := 1
			if u.CrossAttention[l] {
				layoutTransformer(add, b+"1.", c, u.TransformerDepth[l], u.CrossAttentionDim, u.LinearProjection)
				sub = 2
			}
			if l > 0 && j == u.LayersPerBlock {
				layoutConv(add, fmt.Sprintf("%s%d.conv.", b, sub), c, c, 3)
			}
			idx++
		}
	}
	layoutNorm(add, p+"out.0.", c0)
	layoutConv(add, p+"out.2.", c0, u.OutChannels, 3)
}

// layoutVAEResnet is ldm's model.ResnetBlock without time embedding.
func layoutVAEResnet(add addFunc, p string, in, out int) {
	layoutNorm(add, p+"norm1.", in)
	layoutConv(add, p+"conv1.", in, out, 3)
	layoutNorm(add, p+"norm2.", out)
	layoutConv(add, p+"conv2.", out, out, 3)
	if in != out {
		layoutConv(add, p+"nin_shortcut.", in, out, 1)
	}
}

func layoutVAEMid(add addFunc, p string, c int) {
	layoutVAEResnet(add, p+"mid.block_1.", c, c)
	layoutNorm(add, p+"mid.attn_1.norm.", c)
	for _, n := range []string{"q.", "k.", "v.", "proj_out."} {
		layoutConv(add, p+"mid.attn_1."+n, c, c, 1)
	}
	layoutVAEResnet(add, p+"mid.block_2.", c, c)
}

// layoutVAE is ldm's AutoencoderKL (Encoder, Decoder, quant convs).
func layoutVAE(add addFunc, p string, v VAEArch) {
	bc, z := v.BlockChannels, v.LatentChannels
	levels := len(bc)
	layoutConv(add, p+"encoder.conv_in.", v.InChannels, bc[0], 3)
	ch := bc[0]
	for l, c := range bc {
		for j := range v.LayersPerBlock {
			layoutVAEResnet(add, fmt.Sprintf("%sencoder.down.%d.block.%d.", p, l, j), ch, c)
			ch = c
		}
		if l < levels-1 {
			layoutConv(add, fmt.Sprintf("%sencoder.down.%d.downsample.conv.", p, l), c, c, 3)
		}
	}
	layoutVAEMid(add, p+"encoder.", ch)
	layoutNorm(add, p+"encoder.norm_out.", ch)
	layoutConv(add, p+"encoder.conv_out.", ch, 2*z, 3)
	layoutConv(add, p+"quant_conv.", 2*z, 2*z, 1)
	layoutConv(add, p+"post_quant_conv.", z, z, 1)
	ch = bc[levels-1]
	layoutConv(add, p+"decoder.conv_in.", z, ch, 3)
	layoutVAEMid(add, p+"decoder.", ch)
	for l := levels - 1; l >= 0; l-- {
		c := bc[l]
		for j := range v.LayersPerBlock + 1 {
			layoutVAEResnet(add, fmt.Sprintf("%sdecoder.up.%d.block.%d.", p, l, j), ch, c)
			ch = c
		}
		if l > 0 {
			layoutConv(add, fmt.Sprintf("%sdecoder.up.%d.upsample.conv.", p, l), c, c, 3)
		}
	}
	layoutNorm(add, p+"decoder.norm_out.", ch)
	layoutConv(add, p+"decoder.conv_out.", ch, v.OutChannels, 3)
}

// layoutCLIP is transformers' CLIPTextModel under p ("….text_model.").
func layoutCLIP(add addFunc, p string, t TextArch) {
	h, i := t.Hidden, t.Intermediate
	add(p+"embeddings.token_embedding.weight", int64(t.Vocab), int64(h))
	add(p+"embeddings.position_embedding.weight", int64(t.MaxPositions), int64(h))
	for l := range t.Layers {
		b := fmt.Sprintf("%sencoder.layers.%d.", p, l)
		for _, n := range []string{"q_proj.", "k_proj.", "v_proj.", "out_proj."} {
			layoutLinear(add, b+"self_attn."+n, h, h, true)
		}
		layoutNorm(add, b+"layer_norm1.", h)
		layoutLinear(add, b+"mlp.fc1.", h, i, true)
		layoutLinear(add, b+"mlp.fc2.", i, h, true)
		layoutNorm(add, b+"layer_norm2.", h)
	}
	layoutNorm(add, p+"final_layer_norm.", h)
}

// layoutOpenCLIP is open_clip's text tower under p ("….model.").
func layoutOpenCLIP(add addFunc, p string, t TextArch) {
	h, i := t.Hidden, t.Intermediate
	add(p+"token_embedding.weight", int64(t.Vocab), int64(h))
	add(p+"positional_embedding", int64(t.MaxPositions), int64(h))
	for l := range t.Layers {
		b := fmt.Sprintf("%stransformer.resblocks.%d.", p, l)
		add(b+"attn.in_proj_weight", int64(3*h), int64(h))
		add(b+"attn.in_proj_bias", int64(3*h))
		layoutLinear(add, b+"attn.out_proj.", h, h, true)
		layoutNorm(add, b+"ln_1.", h)
		layoutLinear(add, b+"mlp.c_fc.", h, i, true)
		layoutLinear(add, b+"mlp.c_proj.", i, h, true)
		layoutNorm(add, b+"ln_2.", h)
	}
	layoutNorm(add, p+"ln_final.", h)
	if t.ProjectionDim > 0 {
		add(p+"text_projection", int64(h), int64(t.ProjectionDim))
	}
}
