package modelgen

import (
	"fmt"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Config is a Stable-Diffusion architecture: text encoder, UNet and VAE
// sizes. It is a plain value.
type Config struct {
	Name string
	Text TextConfig
	UNet UNetConfig
	VAE  VAEConfig
}

// TextConfig sizes a CLIP text transformer (transformers CLIPTextModel).
type TextConfig struct {
	// Vocab is the number of token embeddings; zero means the size of the
	// generated tokenizer's vocabulary.
	Vocab        int
	Hidden       int
	Layers       int
	Heads        int
	Intermediate int
	MaxPositions int
}

// UNetConfig sizes a diffusers UNet2DConditionModel.
type UNetConfig struct {
	BlockChannels  []int  // per resolution level, e.g. 320, 640, 1280, 1280
	CrossAttention []bool // per down level (up levels mirror it)
	LayersPerBlock int
	Heads          int // attention heads (SD 1.x's "attention_head_dim")
	CrossDim       int // encoder_hidden_states width; zero means Text.Hidden
	InChannels     int
	OutChannels    int
	// SampleSize is the latent size the model is meant for (written to
	// unet/config.json, as optimum does; images are 8× larger).
	SampleSize int
}

// VAEConfig sizes a diffusers AutoencoderKL.
type VAEConfig struct {
	BlockChannels  []int // encoder order, e.g. 128, 256, 512, 512
	LayersPerBlock int
	LatentChannels int
	ScalingFactor  float64
}

// Tiny returns a few-megabyte configuration with the SD architecture that
// runs in milliseconds: hidden 32, 2 text layers, UNet channels (32, 64) with
// cross-attention at the first level, 4 heads, and a VAE with 8× scaling.
func Tiny() Config {
	return Config{
		Name: "tiny",
		Text: TextConfig{Hidden: 32, Layers: 2, Heads: 4, Intermediate: 64, MaxPositions: 77},
		UNet: UNetConfig{
			BlockChannels:  []int{32, 64},
			CrossAttention: []bool{true, false},
			LayersPerBlock: 1,
			Heads:          4,
			InChannels:     4,
			OutChannels:    4,
			SampleSize:     8,
		},
		VAE: VAEConfig{BlockChannels: []int{32, 32, 64, 64}, LayersPerBlock: 1, LatentChannels: 4, ScalingFactor: 0.18215},
	}
}

// SD15 returns the Stable Diffusion 1.5 architecture: CLIP ViT-L/14 text
// encoder (123.1M parameters), UNet (859.5M) and VAE (83.7M).
func SD15() Config {
	return Config{
		Name: "sd15",
		Text: TextConfig{Vocab: 49408, Hidden: 768, Layers: 12, Heads: 12, Intermediate: 3072, MaxPositions: 77},
		UNet: UNetConfig{
			BlockChannels:  []int{320, 640, 1280, 1280},
			CrossAttention: []bool{true, true, true, false},
			LayersPerBlock: 2,
			Heads:          8,
			CrossDim:       768,
			InChannels:     4,
			OutChannels:    4,
			SampleSize:     64,
		},
		VAE: VAEConfig{BlockChannels: []int{128, 256, 512, 512}, LayersPerBlock: 2, LatentChannels: 4, ScalingFactor: 0.18215},
	}
}

// ConfigByName returns Tiny() for "tiny" and SD15() for "sd15".
func ConfigByName(name string) (Config, error) {
	switch name {
	case "tiny":
		return Tiny(), nil
	case "sd15":
		return SD15(), nil
	}
	return Config{}, fmt.Errorf("modelgen: unknown config %q (want tiny or sd15)", name)
}

// TimestepShape is the shape of the UNet's timestep input.
type TimestepShape int

// Timestep shapes seen in real exports.
const (
	TimestepBatch  TimestepShape = iota // [batch] (the default)
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

// Options selects the variant written. The zero value is the common legacy
// diffusers export: int32 input_ids, float32 weights and I/O, timestep
// float32 [batch], weights.pb, symbolic batch, efficient attention, seed 0.
type Options struct {
	Seed uint64
	// IDs is the text encoder's input_ids type: onnxpb.Int32 (zero value)
	// or onnxpb.Int64.
	IDs onnxpb.DataType
	// Timestep is the UNet timestep type: onnxpb.Float, onnxpb.Float16 or
	// onnxpb.Int64; zero means Float (Float16 when FP16 is set).
	Timestep      onnxpb.DataType
	TimestepShape TimestepShape
	// FP16 stores all float weights and float inputs/outputs as float16 and
	// computes in float16.
	FP16 bool
	// LatentParameters makes the VAE encoder output latent_parameters
	// (mean ‖ logvar, 2·latent channels) instead of latent_sample (the mean).
	LatentParameters bool
	// ExternalFile names the UNet's external data file; zero means
	// onnxpb.LegacyExternalFile ("weights.pb").
	ExternalFile string
	// Batch fixes the batch dimension of every input and output; zero keeps
	// it symbolic ("batch").
	Batch int
	// Attention is the attention form of the UNet and VAE.
	Attention AttentionForm
	// Source supplies the weights; nil means RandomSource{Seed: Seed,
	// Type: float16 with FP16, float32 otherwise}.
	Source Source
	// OnModule, when set, is called after each Linear and Conv module (see
	// ModuleHook); nil changes nothing.
	OnModule ModuleHook
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

func (o Options) batchDim() any {
	if o.Batch > 0 {
		return o.Batch
	}
	return "batch"
}

func (o Options) validate() error {
	switch o.IDs {
	case onnxpb.Undefined, onnxpb.Int32, onnxpb.Int64:
	default:
		return fmt.Errorf("modelgen: input_ids type %v not supported (int32 or int64)", o.IDs)
	}
	switch o.Timestep {
	case onnxpb.Undefined, onnxpb.Float, onnxpb.Float16, onnxpb.Int64:
	default:
		return fmt.Errorf("modelgen: timestep type %v not supported (float32, float16 or int64)", o.Timestep)
	}
	if o.TimestepShape < TimestepBatch || o.TimestepShape > TimestepOne {
		return fmt.Errorf("modelgen: unknown timestep shape %d", o.TimestepShape)
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
	switch {
	case c.Text.Hidden <= 0 || c.Text.Layers <= 0 || c.Text.Heads <= 0 || c.Text.Hidden%c.Text.Heads != 0 || c.Text.Intermediate <= 0 || c.Text.MaxPositions <= 0:
		return fmt.Errorf("modelgen: config %q: bad text encoder sizes %+v", c.Name, c.Text)
	case len(u.BlockChannels) == 0 || len(u.CrossAttention) != len(u.BlockChannels) || u.LayersPerBlock <= 0 || u.Heads <= 0 || u.InChannels <= 0 || u.OutChannels <= 0:
		return fmt.Errorf("modelgen: config %q: bad UNet sizes %+v", c.Name, u)
	case len(v.BlockChannels) != 4 || v.LayersPerBlock <= 0 || v.LatentChannels <= 0:
		return fmt.Errorf("modelgen: config %q: VAE needs 4 levels (8× scaling), got %+v", c.Name, v)
	}
	for _, ch := range append(append([]int{}, u.BlockChannels...), v.BlockChannels...) {
		if ch%32 != 0 || ch%u.Heads != 0 {
			return fmt.Errorf("modelgen: config %q: %d channels not a multiple of 32 groups and %d heads", c.Name, ch, u.Heads)
		}
	}
	return nil
}
