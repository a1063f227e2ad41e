package modelgen

import (
	"fmt"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Config is a Stable-Diffusion architecture: text encoder(s), UNet and
// VAE sizes and the scheduler the model is trained for, with the values
// diffusers' and transformers' configs carry (so a loader can fill it from
// a model's files). It is a plain value.
type Config struct {
	Name string
	Text TextConfig
	// Text2 is SDXL's second text encoder (CLIPTextModelWithProjection),
	// whose penultimate hidden states are concatenated after Text's and
	// whose text_embeds feed the UNet; nil for one encoder.
	Text2     *TextConfig
	UNet      UNetConfig
	VAE       VAEConfig
	Scheduler SchedulerConfig
}

// TextConfig sizes a CLIP text transformer (transformers CLIPTextModel, or
// CLIPTextModelWithProjection when ProjectionDim is set).
type TextConfig struct {
	// Vocab is the number of token embeddings; zero means the size of the
	// generated tokenizer's vocabulary.
	Vocab        int
	Hidden       int
	Layers       int
	Heads        int
	Intermediate int
	MaxPositions int
	// Activation is hidden_act: "quick_gelu" (CLIP ViT-L, the default when
	// empty) or "gelu" (OpenCLIP ViT-H and bigG).
	Activation string
	// ProjectionDim, when positive, adds text_projection (Linear, no bias)
	// on the pooled output, written as output text_embeds in place of
	// pooler_output (CLIPTextModelWithProjection, SDXL's text_encoder_2).
	ProjectionDim int
	// EOSTokenID is eos_token_id. The pooled output is taken at
	// argmax(input_ids) when it is 0 or 2 (the legacy CLIP configs, as
	// transformers does), else at the first occurrence of EOSTokenID.
	EOSTokenID int
}

// activation returns hidden_act.
func (t TextConfig) activation() string {
	if t.Activation == "" {
		return "quick_gelu"
	}
	return t.Activation
}

// UNetConfig sizes a diffusers UNet2DConditionModel.
type UNetConfig struct {
	BlockChannels []int // per resolution level, e.g. 320, 640, 1280, 1280
	// CrossAttention tells, per down level, CrossAttnDownBlock2D (true) from
	// DownBlock2D; up levels mirror it. The mid block always has
	// cross-attention (UNetMidBlock2DCrossAttn).
	CrossAttention []bool
	LayersPerBlock int
	// Heads is the number of attention heads at every level (SD 1.x's
	// "attention_head_dim", which diffusers uses as the head count).
	// LevelHeads, when set, gives it per level instead, as the list form of
	// attention_head_dim does (SD 2.x [5, 10, 20, 20], SDXL [5, 10, 20]:
	// heads of 64 channels); the mid block uses the last level's.
	Heads      int
	LevelHeads []int
	// TransformerLayers is transformer_layers_per_block per level (SDXL
	// [1, 2, 10]); nil means 1 everywhere. The mid block uses the last
	// level's; up levels mirror the list.
	TransformerLayers []int
	// LinearProjection is use_linear_projection: Linear proj_in/proj_out
	// (SD 2.x, SDXL) instead of 1×1 convolutions (SD 1.x).
	LinearProjection bool
	// UpcastAttention is upcast_attention (SD 2.1): attention scores in
	// float32. It changes nothing in a float32 graph; float16 graphs
	// compute the scores and softmax in float32 when it is set.
	UpcastAttention bool
	CrossDim        int // encoder_hidden_states width; zero means Text.Hidden (+ Text2.Hidden)
	InChannels      int // 4, or 9 for inpainting (latents ‖ mask ‖ masked-image latents)
	OutChannels     int
	// SampleSize is the latent size the model is meant for (written to
	// unet/config.json; images are 8× larger).
	SampleSize int
	// AdditionEmbed is addition_embed_type: "" or "text_time" (SDXL:
	// inputs text_embeds and time_ids). AdditionTimeEmbedDim is
	// addition_time_embed_dim (SDXL 256), ProjectionInputDim is
	// projection_class_embeddings_input_dim (SDXL 2816 = 1280 + 6·256) and
	// TimeIDs the number of time_ids (6; the SDXL refiner has 5).
	AdditionEmbed        string
	AdditionTimeEmbedDim int
	ProjectionInputDim   int
	TimeIDs              int
	// TimeCondProjDim is time_cond_proj_dim (LCM: 256): input
	// timestep_cond [batch, TimeCondProjDim] through time_embedding.cond_proj.
	TimeCondProjDim int
}

// heads returns the attention heads of level i (the mid block is level
// len-1).
func (u UNetConfig) heads(i int) int {
	if len(u.LevelHeads) > 0 {
		return u.LevelHeads[i]
	}
	return u.Heads
}

// transformerLayers returns the transformer blocks of level i.
func (u UNetConfig) transformerLayers(i int) int {
	if len(u.TransformerLayers) > 0 {
		return u.TransformerLayers[i]
	}
	return 1
}

// timeIDs returns the number of time_ids of a text_time UNet.
func (u UNetConfig) timeIDs() int {
	if u.TimeIDs > 0 {
		return u.TimeIDs
	}
	return 6
}

// TextEmbedsDim returns the width of a text_time UNet's text_embeds input
// (the pooled projection of text_encoder_2), or 0.
func (u UNetConfig) TextEmbedsDim() int {
	if u.AdditionEmbed != "text_time" {
		return 0
	}
	return u.ProjectionInputDim - u.timeIDs()*u.AdditionTimeEmbedDim
}

// crossDim returns the UNet's encoder_hidden_states width.
func (c Config) crossDim() int {
	if c.UNet.CrossDim > 0 {
		return c.UNet.CrossDim
	}
	d := c.Text.Hidden
	if c.Text2 != nil {
		d += c.Text2.Hidden
	}
	return d
}

// VAEConfig sizes a diffusers AutoencoderKL.
type VAEConfig struct {
	BlockChannels  []int // encoder order, e.g. 128, 256, 512, 512
	LayersPerBlock int
	LatentChannels int
	ScalingFactor  float64
	// ForceUpcast is force_upcast (SDXL's VAE overflows in float16).
	ForceUpcast bool
	// SampleSize is the image size written to the config (512, 768, 1024).
	SampleSize int
}

// SchedulerConfig is the scheduler a model ships with
// (scheduler/scheduler_config.json): a diffusers class with SD's
// scaled_linear betas 0.00085–0.012 and the class's usual settings.
type SchedulerConfig struct {
	// Class is the diffusers class: PNDMScheduler (the zero value),
	// DDIMScheduler, EulerDiscreteScheduler or LCMScheduler.
	Class string
	// Prediction is prediction_type: "epsilon" (the zero value) or
	// "v_prediction".
	Prediction string
	// Spacing is timestep_spacing: "leading" (the zero value) or
	// "trailing" (SD-Turbo, SDXL-Turbo).
	Spacing string
}

// TimestepShape is the shape of the UNet's timestep input.
type TimestepShape int

// Timestep shapes seen in real exports.
const (
	TimestepBatch  TimestepShape = iota // [batch] (the default; optimum names it [steps])
	TimestepScalar                      // [] (a 0-d tensor)
	TimestepOne                         // [1], broadcast over the batch
)

// String returns "batch", "scalar" or "one".
func (s TimestepShape) String() string {
	switch s {
	case TimestepScalar:
		return "scalar"
	case TimestepOne:
		return "one"
	}
	return "batch"
}

// Layout is the folder layout and export convention Write follows.
type Layout int

// Layouts.
const (
	// LayoutAuto is Optimum for configurations with two text encoders
	// (SDXL) or a timestep_cond input (LCM), which only optimum exports,
	// and Legacy otherwise.
	LayoutAuto Layout = iota
	// Legacy is diffusers' own ONNX exporter
	// (convert_stable_diffusion_checkpoint_to_onnx.py, OnnxStableDiffusion*
	// pipelines): dims named batch, sequence, height, width; timestep
	// float32 [batch]; the UNet's weights in weights.pb; the VAE encoder's
	// output latent_sample (here the posterior mean).
	Legacy
	// Optimum is optimum's exporter (1.2x, ORTStableDiffusion*Pipeline):
	// dims named batch_size, sequence_length, height_latent, …; text
	// encoders with hidden_states.0 … hidden_states.L; timestep int64
	// [steps]; input_ids int32 for text_encoder and int64 for
	// text_encoder_2; the VAE encoder's output latent_parameters; a
	// config.json in every component folder; model.onnx_data for
	// components over 2 GB. Newer optimum versions (≥ 1.24) write a
	// float32 scalar timestep and int64 ids: Options.Timestep,
	// TimestepShape and IDs select them.
	Optimum
)

// String returns "auto", "legacy" or "optimum".
func (l Layout) String() string {
	switch l {
	case Legacy:
		return "legacy"
	case Optimum:
		return "optimum"
	}
	return "auto"
}

// Options selects the variant written. The zero value is the common export
// of the configuration's family (see LayoutAuto): for SD 1.x and 2.x the
// legacy diffusers export with int32 input_ids, float32 weights and I/O,
// timestep float32 [batch], weights.pb, symbolic batch, efficient
// attention, seed 0.
type Options struct {
	Seed uint64
	// Layout is the export convention; zero means LayoutAuto.
	Layout Layout
	// IDs is the text encoder's input_ids type: onnxpb.Int32 (the zero
	// value's meaning) or onnxpb.Int64. IDs2 is text_encoder_2's; zero
	// means onnxpb.Int64 (as optimum writes it).
	IDs  onnxpb.DataType
	IDs2 onnxpb.DataType
	// HiddenStates adds outputs hidden_states.0 … hidden_states.L to the
	// text encoders (always on in the Optimum layout).
	HiddenStates bool
	// Timestep is the UNet timestep type: onnxpb.Float, onnxpb.Float16 or
	// onnxpb.Int64; zero means Float (Float16 when FP16 is set) in the
	// Legacy layout and Int64 in the Optimum one.
	Timestep      onnxpb.DataType
	TimestepShape TimestepShape
	// FP16 stores all float weights and float inputs/outputs as float16 and
	// computes in float16.
	FP16 bool
	// LatentParameters makes the VAE encoder output latent_parameters
	// (mean ‖ logvar, 2·latent channels) instead of latent_sample (the
	// mean); always on in the Optimum layout.
	LatentParameters bool
	// ExternalFile names the external data file. In the Legacy layout the
	// UNet's weights always go there (zero means onnxpb.LegacyExternalFile,
	// "weights.pb"); in the Optimum layout components over 2 GB go to
	// model.onnx_data, and setting ExternalFile moves the UNet's and
	// text_encoder_2's weights to that file whatever their size (as real
	// SDXL exports store them).
	ExternalFile string
	// Batch fixes the batch dimension of every input and output; zero keeps
	// it symbolic.
	Batch int
	// ChannelsDim writes the channel dimension of the UNet's sample and of
	// the VAE decoder's and encoder's inputs as the symbolic "channels", as
	// diffusers' legacy exporter does (a loader then has to learn a 9-channel
	// inpainting UNet from elsewhere, e.g. conv_in's weight or
	// unet/config.json). By default it is the fixed size.
	ChannelsDim bool
	// Attention is the attention form of the UNet and VAE.
	Attention AttentionForm
	// Source supplies the weights; nil means RandomSource{Seed: Seed,
	// Type: float16 with FP16, float32 otherwise}.
	Source Source
	// OnModule, when set, is called after each Linear and Conv module (see
	// ModuleHook); nil changes nothing.
	OnModule ModuleHook
}

// resolve returns o with its layout decided for cfg.
func (o Options) resolve(cfg Config) Options {
	if o.Layout == LayoutAuto {
		o.Layout = Legacy
		if cfg.Text2 != nil || cfg.UNet.TimeCondProjDim > 0 {
			o.Layout = Optimum
		}
	}
	return o
}

// optimum reports whether the (resolved) layout is Optimum.
func (o Options) optimum() bool { return o.Layout == Optimum }

// dim returns the symbolic name of a dimension in the layout: "batch",
// "sequence", "height", "width", "latent_height", "latent_width" or
// "steps" (Legacy names; Optimum's are batch_size, sequence_length,
// height_latent, width_latent, steps).
func (o Options) dim(name string) any {
	if name == "batch" && o.Batch > 0 {
		return o.Batch
	}
	if !o.optimum() {
		if name == "steps" {
			return o.dim("batch")
		}
		return name
	}
	switch name {
	case "batch":
		return "batch_size"
	case "sequence":
		return "sequence_length"
	case "latent_height":
		return "height_latent"
	case "latent_width":
		return "width_latent"
	}
	return name
}

// channels returns the channel dimension of an input with n channels.
func (o Options) channels(n int) any {
	if o.ChannelsDim {
		return "channels"
	}
	return n
}

// source returns the Source the options select.
func (o Options) source() Source {
	if o.Source != nil {
		return o.Source
	}
	return RandomSource{Seed: o.Seed, Type: o.floatType()}
}

// floatType returns the float element type of weights and activations.
func (o Options) floatType() onnxpb.DataType {
	if o.FP16 {
		return onnxpb.Float16
	}
	return onnxpb.Float
}

func (o Options) batchDim() any { return o.dim("batch") }

func (o Options) validate() error {
	for _, ids := range []onnxpb.DataType{o.IDs, o.IDs2} {
		switch ids {
		case onnxpb.Undefined, onnxpb.Int32, onnxpb.Int64:
		default:
			return fmt.Errorf("modelgen: input_ids type %v not supported (int32 or int64)", ids)
		}
	}
	switch o.Timestep {
	case onnxpb.Undefined, onnxpb.Float, onnxpb.Float16, onnxpb.Int64:
	default:
		return fmt.Errorf("modelgen: timestep type %v not supported (float32, float16 or int64)", o.Timestep)
	}
	if o.TimestepShape < TimestepBatch || o.TimestepShape > TimestepOne {
		return fmt.Errorf("modelgen: unknown timestep shape %d", o.TimestepShape)
	}
	if o.Layout < LayoutAuto || o.Layout > Optimum {
		return fmt.Errorf("modelgen: unknown layout %d", o.Layout)
	}
	if o.Batch < 0 {
		return fmt.Errorf("modelgen: negative batch %d", o.Batch)
	}
	if o.Attention != Efficient && o.Attention != Baddbmm {
		return fmt.Errorf("modelgen: unknown attention form %d", o.Attention)
	}
	return nil
}

func (c Config) validate() error {
	u, v := c.UNet, c.VAE
	texts := []TextConfig{c.Text}
	if c.Text2 != nil {
		texts = append(texts, *c.Text2)
	}
	for _, t := range texts {
		if t.Hidden <= 0 || t.Layers <= 0 || t.Heads <= 0 || t.Hidden%t.Heads != 0 || t.Intermediate <= 0 || t.MaxPositions <= 0 || t.ProjectionDim < 0 {
			return fmt.Errorf("modelgen: config %q: bad text encoder sizes %+v", c.Name, t)
		}
		if a := t.activation(); a != "quick_gelu" && a != "gelu" {
			return fmt.Errorf("modelgen: config %q: text activation %q not supported (quick_gelu or gelu)", c.Name, a)
		}
	}
	n := len(u.BlockChannels)
	switch {
	case n == 0 || len(u.CrossAttention) != n || u.LayersPerBlock <= 0 || u.InChannels <= 0 || u.OutChannels <= 0:
		return fmt.Errorf("modelgen: config %q: bad UNet sizes %+v", c.Name, u)
	case len(u.LevelHeads) == 0 && u.Heads <= 0, len(u.LevelHeads) > 0 && len(u.LevelHeads) != n:
		return fmt.Errorf("modelgen: config %q: UNet heads %d / %v for %d levels", c.Name, u.Heads, u.LevelHeads, n)
	case len(u.TransformerLayers) > 0 && len(u.TransformerLayers) != n:
		return fmt.Errorf("modelgen: config %q: transformer layers %v for %d levels", c.Name, u.TransformerLayers, n)
	case u.AdditionEmbed != "" && u.AdditionEmbed != "text_time":
		return fmt.Errorf("modelgen: config %q: addition_embed_type %q not supported (text_time)", c.Name, u.AdditionEmbed)
	case u.AdditionEmbed == "text_time" && (u.AdditionTimeEmbedDim <= 0 || u.AdditionTimeEmbedDim%2 != 0 || u.TextEmbedsDim() <= 0):
		return fmt.Errorf("modelgen: config %q: text_time embedding needs an even addition_time_embed_dim and projection_class_embeddings_input_dim above %d·it, got %d and %d", c.Name, u.timeIDs(), u.AdditionTimeEmbedDim, u.ProjectionInputDim)
	case u.TimeCondProjDim < 0:
		return fmt.Errorf("modelgen: config %q: negative time_cond_proj_dim", c.Name)
	case len(v.BlockChannels) != 4 || v.LayersPerBlock <= 0 || v.LatentChannels <= 0:
		return fmt.Errorf("modelgen: config %q: VAE needs 4 levels (8× scaling), got %+v", c.Name, v)
	}
	for i, ch := range u.BlockChannels {
		if ch%32 != 0 || u.heads(i) <= 0 || ch%u.heads(i) != 0 || u.transformerLayers(i) <= 0 {
			return fmt.Errorf("modelgen: config %q: UNet level %d: %d channels not a multiple of 32 groups and %d heads (or %d transformer layers)", c.Name, i, ch, u.heads(i), u.transformerLayers(i))
		}
	}
	for _, ch := range v.BlockChannels {
		if ch%32 != 0 {
			return fmt.Errorf("modelgen: config %q: VAE: %d channels not a multiple of 32 groups", c.Name, ch)
		}
	}
	if u.AdditionEmbed == "text_time" && (c.Text2 == nil || c.Text2.ProjectionDim != u.TextEmbedsDim()) {
		return fmt.Errorf("modelgen: config %q: text_time UNet wants text_embeds of %d, which needs text_encoder_2 with that projection_dim", c.Name, u.TextEmbedsDim())
	}
	switch c.Scheduler.Class {
	case "", "PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LCMScheduler":
	default:
		return fmt.Errorf("modelgen: config %q: scheduler %q not supported", c.Name, c.Scheduler.Class)
	}
	return nil
}
