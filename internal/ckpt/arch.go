package ckpt

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// Component names one model of a checkpoint, as diffusers names its folder.
type Component string

// The components of a Stable Diffusion checkpoint.
const (
	UNet         Component = "unet"
	VAE          Component = "vae"
	TextEncoder  Component = "text_encoder"
	TextEncoder2 Component = "text_encoder_2"
)

// Family is a Stable Diffusion model family.
type Family string

// The families Detect recognises.
const (
	SD1         Family = "sd1"          // SD 1.x: CLIP ViT-L/14 text encoder
	SD2         Family = "sd2"          // SD 2.x: OpenCLIP ViT-H/14, penultimate layer
	SDXL        Family = "sdxl"         // SDXL base: CLIP ViT-L + OpenCLIP ViT-bigG
	SDXLRefiner Family = "sdxl-refiner" // SDXL refiner: OpenCLIP ViT-bigG only
)

// Key prefixes of the original (LDM) layout.
const (
	unetPrefix   = "model.diffusion_model."
	vaePrefix    = "first_stage_model."
	clipPrefix   = "cond_stage_model.transformer."
	openCLIPSD2  = "cond_stage_model.model."
	sdxlCLIP     = "conditioner.embedders.0.transformer."
	sdxlOpenCLIP = "conditioner.embedders.1.model."
	refinerCLIP  = "conditioner.embedders.0.model."
)

// Arch is a checkpoint's architecture: everything the graph builder needs
// that the tensors say, plus the few hyper-parameters they cannot say
// (attention heads, activations), taken from the family's published
// configuration or from a Config.
type Arch struct {
	Family     Family
	Inpainting bool   // a 9-channel UNet input (latents, mask, masked-image latents)
	Prediction string // "epsilon" or "v_prediction"
	// ImageSize is the image side the model was trained for (512, 768,
	// 1024), as diffusers' loader sets it.
	ImageSize int
	UNet      UNetArch
	VAE       VAEArch
	// Text lists the text encoders in order (text_encoder, then
	// text_encoder_2 for SDXL).
	Text []TextArch
}

// UNetArch describes a diffusers UNet2DConditionModel.
type UNetArch struct {
	InChannels, OutChannels int
	BlockChannels           []int  // per level
	LayersPerBlock          int    // resnets per down level (up levels have one more)
	CrossAttention          []bool // per down level; up levels mirror it
	// TransformerDepth is the number of transformer blocks of each down
	// level's attentions (0 where there is none); MidDepth the mid block's.
	TransformerDepth []int
	MidDepth         int
	// Heads is the number of attention heads per down level (diffusers'
	// attention_head_dim as the configs write it).
	Heads             []int
	CrossAttentionDim int
	LinearProjection  bool // Linear proj_in/proj_out (SD 2.x, SDXL) instead of 1×1 convs
	UpcastAttention   bool
	TimeEmbedDim      int
	// SDXL's added conditioning (addition_embed_type "text_time"): the
	// input width of add_embedding (pooled text + 6 time ids × 256) and the
	// time-id embedding width; zero when absent.
	AdditionEmbedInputDim int
	AdditionTimeEmbedDim  int
}

// VAEArch describes a diffusers AutoencoderKL.
type VAEArch struct {
	InChannels, OutChannels int
	LatentChannels          int
	BlockChannels           []int // encoder order
	LayersPerBlock          int   // resnets per encoder level (decoder levels have one more)
	ScalingFactor           float64
	ForceUpcast             bool
}

// TextArch describes a transformers CLIPTextModel (or
// CLIPTextModelWithProjection when ProjectionDim is non-zero).
type TextArch struct {
	Component Component
	// TextConfig holds the sizes the generated graph takes: Activation is
	// "quick_gelu" (OpenAI CLIP) or "gelu" (OpenCLIP); ProjectionDim, the
	// width of text_projection (text_embeds), is zero when the encoder has
	// none.
	modelgen.TextConfig
	LayerNormEps float64
	// PadToken is the tokenizer's padding token: "<|endoftext|>" for
	// OpenAI CLIP, "!" for the OpenCLIP encoders (as diffusers' SD 2.x and
	// SDXL tokenizer configs say).
	PadToken string
}

// Config holds hyper-parameters a checkpoint's tensors cannot tell, for
// models whose family defaults do not fit (tiny test models, unusual
// fine-tunes). Zero fields keep the defaults. ReadConfigDir fills one from
// diffusers/transformers config files.
type Config struct {
	UNetHeads     []int             // per down level (one value means all levels)
	TextHeads     map[Component]int // per text encoder
	TextAct       map[Component]string
	TextEps       map[Component]float64
	ScalingFactor float64
	Prediction    string
	ImageSize     int
}

// FormatError is returned for a file Detect or Convert cannot place.
type FormatError struct {
	Reason string
	Keys   []string // the keys concerned (a sample when there are many)
	More   int      // how many further keys are concerned
}

func (e *FormatError) Error() string {
	s := "ckpt: " + e.Reason
	if len(e.Keys) > 0 {
		s += ": " + strings.Join(e.Keys, ", ")
		if e.More > 0 {
			s += fmt.Sprintf(" and %d more", e.More)
		}
	}
	return s
}

func keysErr(reason string, keys []string) error {
	slices.Sort(keys)
	const show = 10
	e := &FormatError{Reason: reason, Keys: keys}
	if len(keys) > show {
		e.Keys, e.More = keys[:show], len(keys)-show
	}
	return e
}

// keyset indexes a checkpoint's tensors by name.
type keyset map[string]safetensors.Info

func newKeyset(ts []safetensors.Info) keyset {
	k := make(keyset, len(ts))
	for _, t := range ts {
		k[t.Name] = t
	}
	return k
}

func (k keyset) has(name string) bool { _, ok := k[name]; return ok }

// shape returns the shape of name, or nil when it is absent.
func (k keyset) shape(name string) []int64 {
	if t, ok := k[name]; ok {
		return t.Shape
	}
	return nil
}

// dim returns dimension i of name's shape (negative i counts from the end),
// or -1 when the tensor is absent or has no such dimension.
func (k keyset) dim(name string, i int) int {
	s := k.shape(name)
	if i < 0 {
		i += len(s)
	}
	if s == nil || i < 0 || i >= len(s) {
		return -1
	}
	return int(s[i])
}

func (k keyset) hasPrefix(p string) bool {
	for name := range k {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// indices returns the sorted distinct integers n of keys "<prefix>n.…".
func (k keyset) indices(prefix string) []int {
	seen := map[int]bool{}
	for name := range k {
		rest, ok := strings.CutPrefix(name, prefix)
		if !ok {
			continue
		}
		num, _, _ := strings.Cut(rest, ".")
		if n, err := strconv.Atoi(num); err == nil && n >= 0 {
			seen[n] = true
		}
	}
	out := make([]int, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// count returns how many consecutive indices 0, 1, … keys "<prefix>n." have.
func (k keyset) count(prefix string) int {
	idx := k.indices(prefix)
	n := 0
	for n < len(idx) && idx[n] == n {
		n++
	}
	return n
}

// Detect reads the architecture of the original-layout checkpoint whose
// tensors are ts. cfg (nil for none) overrides the hyper-parameters the
// tensors cannot tell.
func Detect(ts []safetensors.Info, cfg *Config) (*Arch, error) {
	k := newKeyset(ts)
	if cfg == nil {
		cfg = &Config{}
	}
	if !k.hasPrefix(unetPrefix) {
		return nil, notACheckpoint(k)
	}
	a := &Arch{Prediction: "epsilon"}
	switch {
	case k.hasPrefix(sdxlOpenCLIP):
		a.Family, a.ImageSize = SDXL, 1024
	case k.hasPrefix(refinerCLIP):
		a.Family, a.ImageSize = SDXLRefiner, 1024
	case k.hasPrefix(openCLIPSD2):
		// diffusers' loader treats every SD 2.x checkpoint as the 768-pixel
		// v-prediction model (stable-diffusion-2-1); the 512-pixel base
		// models need Config.Prediction "epsilon".
		a.Family, a.ImageSize, a.Prediction = SD2, 768, "v_prediction"
	case k.hasPrefix(clipPrefix):
		a.Family, a.ImageSize = SD1, 512
	default:
		return nil, &FormatError{Reason: "the checkpoint has a UNet (model.diffusion_model.*) but no text encoder this loader knows (cond_stage_model.transformer.*, cond_stage_model.model.* or conditioner.embedders.*)"}
	}
	var err error
	if a.UNet, err = detectUNet(k, a.Family, cfg); err != nil {
		return nil, err
	}
	a.Inpainting = a.UNet.InChannels == 9
	if a.Inpainting {
		a.Prediction = "epsilon" // the SD 2 inpainting model is an epsilon model
		if a.Family == SD2 {
			a.ImageSize = 512
		}
	}
	if a.VAE, err = detectVAE(k, vaePrefix); err != nil {
		return nil, err
	}
	if a.Family == SDXL || a.Family == SDXLRefiner {
		a.VAE.ScalingFactor, a.VAE.ForceUpcast = 0.13025, true
	}
	switch a.Family {
	case SD1:
		t, err := detectCLIP(k, clipPrefix, TextEncoder, cfg)
		if err != nil {
			return nil, err
		}
		a.Text = []TextArch{t}
	case SD2:
		t, err := detectOpenCLIP(k, openCLIPSD2, TextEncoder, true, cfg)
		if err != nil {
			return nil, err
		}
		a.Text = []TextArch{t}
	case SDXL:
		t1, err := detectCLIP(k, sdxlCLIP, TextEncoder, cfg)
		if err != nil {
			return nil, err
		}
		t2, err := detectOpenCLIP(k, sdxlOpenCLIP, TextEncoder2, false, cfg)
		if err != nil {
			return nil, err
		}
		a.Text = []TextArch{t1, t2}
	case SDXLRefiner:
		t, err := detectOpenCLIP(k, refinerCLIP, TextEncoder2, false, cfg)
		if err != nil {
			return nil, err
		}
		a.Text = []TextArch{t}
	}
	if cfg.ScalingFactor != 0 {
		a.VAE.ScalingFactor = cfg.ScalingFactor
	}
	if cfg.Prediction != "" {
		if cfg.Prediction != "epsilon" && cfg.Prediction != "v_prediction" {
			return nil, fmt.Errorf("ckpt: unknown prediction type %q (epsilon or v_prediction)", cfg.Prediction)
		}
		a.Prediction = cfg.Prediction
	}
	if cfg.ImageSize > 0 {
		a.ImageSize = cfg.ImageSize
	}
	return a, nil
}

// notACheckpoint explains what a file without a UNet seems to be.
func notACheckpoint(k keyset) error {
	reason := "not a Stable Diffusion checkpoint in the original layout (no model.diffusion_model.* keys)"
	switch {
	case k.hasPrefix("lora_unet_") || k.hasPrefix("lora_te"):
		reason = "this is a LoRA file (lora_unet_*/lora_te_* keys), not a checkpoint: apply it to a checkpoint as a LoRA"
	case k.has("emb_params") || k.hasPrefix("string_to_param"):
		reason = "this is a textual-inversion embedding, not a checkpoint: use it from a prompt"
	case k.hasPrefix("encoder.down.") || k.hasPrefix("encoder.down_blocks.") || k.hasPrefix(vaePrefix):
		reason = "this is a VAE file, not a whole checkpoint: use it as the model's VAE"
	case k.hasPrefix("down_blocks.") || k.hasPrefix("unet."):
		reason = "this is a diffusers-layout model file (down_blocks.* keys), not an original single-file checkpoint: open its diffusers folder instead"
	case k.hasPrefix("double_blocks.") || k.hasPrefix("model.diffusion_model.double_blocks.") || k.hasPrefix("joint_blocks.") || k.hasPrefix("model.diffusion_model.joint_blocks."):
		reason = "this is a Flux or SD3 transformer checkpoint, which this loader does not support (SD 1.x, SD 2.x and SDXL only)"
	}
	return &FormatError{Reason: reason}
}

func detectUNet(k keyset, fam Family, cfg *Config) (UNetArch, error) {
	p := unetPrefix
	var u UNetArch
	bad := func(format string, args ...any) (UNetArch, error) {
		return UNetArch{}, &FormatError{Reason: "UNet: " + fmt.Sprintf(format, args...)}
	}
	conv := p + "input_blocks.0.0.weight"
	if len(k.shape(conv)) != 4 {
		return bad("%s missing or not a conv kernel", conv)
	}
	u.InChannels = k.dim(conv, 1)
	u.OutChannels = k.dim(p+"out.2.weight", 0)
	u.TimeEmbedDim = k.dim(p+"time_embed.0.weight", 0)
	if u.OutChannels <= 0 || u.TimeEmbedDim <= 0 {
		return bad("out.2.weight or time_embed.0.weight missing")
	}
	in := k.count(p + "input_blocks.")
	out := k.count(p + "output_blocks.")
	// Level k's down path is input_blocks 1+k·(L+1) … (k+1)·(L+1), the last
	// of which is the downsampler (…0.op), except at the deepest level.
	lpb := in - 1
	for i := 1; i < in; i++ {
		if k.has(fmt.Sprintf("%sinput_blocks.%d.0.op.weight", p, i)) {
			lpb = i - 1
			break
		}
	}
	if lpb <= 0 || out%(lpb+1) != 0 {
		return bad("%d input blocks and %d output blocks do not form levels", in, out)
	}
	levels := out / (lpb + 1)
	if in != levels*(lpb+1) {
		return bad("%d input blocks for %d levels of %d resnets", in, levels, lpb)
	}
	u.LayersPerBlock = lpb
	for l := range levels {
		first := 1 + l*(lpb+1)
		res := fmt.Sprintf("%sinput_blocks.%d.0.", p, first)
		c := k.dim(res+"out_layers.3.weight", 0)
		if c <= 0 {
			return bad("%sout_layers.3.weight missing", res)
		}
		u.BlockChannels = append(u.BlockChannels, c)
		attn := fmt.Sprintf("%sinput_blocks.%d.1.", p, first)
		depth := k.count(attn + "transformer_blocks.")
		u.CrossAttention = append(u.CrossAttention, depth > 0)
		u.TransformerDepth = append(u.TransformerDepth, depth)
		if depth > 0 && u.CrossAttentionDim == 0 {
			u.CrossAttentionDim = k.dim(attn+"transformer_blocks.0.attn2.to_k.weight", 1)
			u.LinearProjection = len(k.shape(attn+"proj_in.weight")) == 2
		}
	}
	u.MidDepth = k.count(p + "middle_block.1.transformer_blocks.")
	if u.CrossAttentionDim <= 0 {
		u.CrossAttentionDim = k.dim(p+"middle_block.1.transformer_blocks.0.attn2.to_k.weight", 1)
		u.LinearProjection = len(k.shape(p+"middle_block.1.proj_in.weight")) == 2
	}
	if u.CrossAttentionDim <= 0 {
		return bad("no cross-attention (attn2.to_k) found")
	}
	if k.has(p + "label_emb.0.0.weight") {
		if fam != SDXL && fam != SDXLRefiner {
			return bad("label_emb (class conditioning) is only supported for SDXL")
		}
		u.AdditionEmbedInputDim = k.dim(p+"label_emb.0.0.weight", 1)
		u.AdditionTimeEmbedDim = 256
	}
	switch {
	case len(cfg.UNetHeads) == 1:
		for range levels {
			u.Heads = append(u.Heads, cfg.UNetHeads[0])
		}
	case len(cfg.UNetHeads) == levels:
		u.Heads = slices.Clone(cfg.UNetHeads)
	case len(cfg.UNetHeads) != 0:
		return bad("%d head counts given for %d levels", len(cfg.UNetHeads), levels)
	case fam == SD1:
		for range levels {
			u.Heads = append(u.Heads, 8) // SD 1.x: num_heads 8 at every level
		}
	default:
		// SD 2.x and SDXL: head dimension 64 (num_head_channels).
		for _, c := range u.BlockChannels {
			if c%64 != 0 {
				return bad("%d channels are not a multiple of the 64-wide heads of %s; give the head counts", c, fam)
			}
			u.Heads = append(u.Heads, c/64)
		}
	}
	for l, c := range u.BlockChannels {
		if u.Heads[l] <= 0 || c%u.Heads[l] != 0 {
			return bad("%d heads do not divide the %d channels of level %d", u.Heads[l], c, l)
		}
	}
	u.UpcastAttention = fam == SD2
	return u, nil
}

// detectVAE reads an AutoencoderKL in the original layout under prefix
// ("first_stage_model." or "" for a separate VAE file).
func detectVAE(k keyset, p string) (VAEArch, error) {
	var v VAEArch
	bad := func(format string, args ...any) (VAEArch, error) {
		return VAEArch{}, &FormatError{Reason: "VAE: " + fmt.Sprintf(format, args...)}
	}
	if !k.has(p + "encoder.conv_in.weight") {
		return bad("%sencoder.conv_in.weight missing (the checkpoint has no VAE?)", p)
	}
	v.InChannels = k.dim(p+"encoder.conv_in.weight", 1)
	v.OutChannels = k.dim(p+"decoder.conv_out.weight", 0)
	v.LatentChannels = k.dim(p+"post_quant_conv.weight", 0)
	if v.OutChannels <= 0 || v.LatentChannels <= 0 {
		return bad("decoder.conv_out or post_quant_conv missing")
	}
	levels := k.count(p + "encoder.down.")
	if levels == 0 || k.count(p+"decoder.up.") != levels {
		return bad("%d encoder levels and %d decoder levels", levels, k.count(p+"decoder.up."))
	}
	v.LayersPerBlock = k.count(p + "encoder.down.0.block.")
	for l := range levels {
		pre := fmt.Sprintf("%sencoder.down.%d.block.", p, l)
		if k.count(pre) != v.LayersPerBlock {
			return bad("encoder level %d has %d resnets, level 0 has %d", l, k.count(pre), v.LayersPerBlock)
		}
		if n := k.count(fmt.Sprintf("%sdecoder.up.%d.block.", p, l)); n != v.LayersPerBlock+1 {
			return bad("decoder level %d has %d resnets, want %d", l, n, v.LayersPerBlock+1)
		}
		v.BlockChannels = append(v.BlockChannels, k.dim(pre+"0.conv1.weight", 0))
	}
	v.ScalingFactor = 0.18215
	return v, nil
}

// textDefaults are the published hyper-parameters of the CLIP text
// encoders Stable Diffusion uses, by hidden size.
var textHeads = map[int]int{768: 12, 1024: 16, 1280: 20}

func textHyper(t *TextArch, cfg *Config) error {
	if h := cfg.TextHeads[t.Component]; h > 0 {
		t.Heads = h
	} else if h, ok := textHeads[t.Hidden]; ok {
		t.Heads = h
	} else {
		return &FormatError{Reason: fmt.Sprintf("%s: hidden size %d is none of the known CLIP text encoders' (768, 1024, 1280): give its head count (num_attention_heads of its config)", t.Component, t.Hidden)}
	}
	if t.Hidden%t.Heads != 0 {
		return &FormatError{Reason: fmt.Sprintf("%s: %d heads do not divide hidden size %d", t.Component, t.Heads, t.Hidden)}
	}
	if a := cfg.TextAct[t.Component]; a != "" {
		if a != "gelu" && a != "quick_gelu" {
			return fmt.Errorf("ckpt: %s: unsupported activation %q (gelu or quick_gelu)", t.Component, a)
		}
		t.Activation = a
	}
	if e := cfg.TextEps[t.Component]; e > 0 {
		t.LayerNormEps = e
	}
	return nil
}

// detectCLIP reads an OpenAI CLIP text encoder in transformers' naming under
// prefix.
func detectCLIP(k keyset, p string, c Component, cfg *Config) (TextArch, error) {
	t := TextArch{Component: c, TextConfig: modelgen.TextConfig{Activation: "quick_gelu"}, LayerNormEps: 1e-5, PadToken: "<|endoftext|>"}
	tm := p + "text_model."
	if !k.hasPrefix(tm) && k.hasPrefix(p+"embeddings.") {
		tm = p // old transformers naming without text_model.
	}
	if !k.textSizes(&t, tm+"embeddings.token_embedding.weight", tm+"embeddings.position_embedding.weight",
		tm+"encoder.layers.", tm+"encoder.layers.0.mlp.fc1.weight") {
		return TextArch{}, &FormatError{Reason: fmt.Sprintf("%s: incomplete CLIP text encoder under %s", c, p)}
	}
	return t, textHyper(&t, cfg)
}

// textSizes reads a text encoder's sizes into t from the token embedding
// emb, the position embedding pos, the number of layers under layers and
// the first layer's MLP input weight fc1, and reports whether all of them
// are there.
func (k keyset) textSizes(t *TextArch, emb, pos, layers, fc1 string) bool {
	t.Vocab, t.Hidden = k.dim(emb, 0), k.dim(emb, 1)
	t.MaxPositions = k.dim(pos, 0)
	t.Layers = k.count(layers)
	t.Intermediate = k.dim(fc1, 0)
	return t.Vocab > 0 && t.MaxPositions > 0 && t.Layers != 0 && t.Intermediate > 0
}

// detectOpenCLIP reads an OpenCLIP text tower under prefix. SD 2.x uses its
// penultimate layer, so penultimate drops the last layer and the
// projection, as diffusers' loader does.
func detectOpenCLIP(k keyset, p string, c Component, penultimate bool, cfg *Config) (TextArch, error) {
	t := TextArch{Component: c, TextConfig: modelgen.TextConfig{Activation: "gelu"}, LayerNormEps: 1e-5, PadToken: "!"}
	if !k.textSizes(&t, p+"token_embedding.weight", p+"positional_embedding",
		p+"transformer.resblocks.", p+"transformer.resblocks.0.mlp.c_fc.weight") {
		return TextArch{}, &FormatError{Reason: fmt.Sprintf("%s: incomplete OpenCLIP text encoder under %s", c, p)}
	}
	if in := k.dim(p+"transformer.resblocks.0.attn.in_proj_weight", 0); in != 3*t.Hidden {
		return TextArch{}, &FormatError{Reason: fmt.Sprintf("%s: in_proj_weight has %d rows, want 3×%d", c, in, t.Hidden)}
	}
	if penultimate {
		t.Layers--
	} else if k.has(p + "text_projection") {
		t.ProjectionDim = k.dim(p+"text_projection", 1)
	}
	return t, textHyper(&t, cfg)
}
