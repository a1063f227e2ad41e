package modelgen

import (
	"fmt"
	"strings"
)

// Tiny returns a few-megabyte configuration with the SD 1.x architecture
// that runs in milliseconds: hidden 32, 2 text layers, UNet channels
// (32, 64) with cross-attention at the first level, 4 heads, and a VAE with
// 8× scaling.
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
		VAE: VAEConfig{BlockChannels: []int{32, 32, 64, 64}, LayersPerBlock: 1, LatentChannels: 4, ScalingFactor: 0.18215, SampleSize: 64},
	}
}

// SD15 returns the Stable Diffusion 1.5 architecture: CLIP ViT-L/14 text
// encoder (123,060,480 parameters), UNet (859,520,964) and VAE
// (83,653,863), with the PNDM scheduler it ships with.
func SD15() Config {
	return Config{
		Name: "sd15",
		Text: TextConfig{Vocab: 49408, Hidden: 768, Layers: 12, Heads: 12, Intermediate: 3072, MaxPositions: 77, EOSTokenID: 2},
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
		VAE: sdVAE(0.18215, 512),
	}
}

// sdVAE is the AutoencoderKL of SD 1.x, SD 2.x and SDXL (83,653,863
// parameters).
func sdVAE(scaling float64, size int) VAEConfig {
	return VAEConfig{BlockChannels: []int{128, 256, 512, 512}, LayersPerBlock: 2, LatentChannels: 4, ScalingFactor: scaling, SampleSize: size}
}

// SD15Inpaint returns SD 1.5's inpainting architecture
// (runwayml/stable-diffusion-inpainting): the SD 1.5 UNet with 9 input
// channels (859,535,364 parameters).
func SD15Inpaint() Config {
	c := SD15()
	c.Name = "sd15-inpaint"
	c.UNet.InChannels = 9
	return c
}

// TinyInpaint is Tiny with a 9-channel UNet.
func TinyInpaint() Config {
	c := Tiny()
	c.Name = "tiny-inpaint"
	c.UNet.InChannels = 9
	return c
}

// SD21 returns the Stable Diffusion 2.1 (768-v) architecture: OpenCLIP
// ViT-H/14 text encoder in transformers' CLIPTextModel form (23 layers of
// 1024, gelu: 340,387,840 parameters), UNet with linear projections,
// heads of 64 channels and 1024-wide cross-attention (865,910,724), the SD
// VAE, and DDIM with v_prediction at 768×768.
func SD21() Config {
	return Config{
		Name: "sd21",
		Text: TextConfig{Vocab: 49408, Hidden: 1024, Layers: 23, Heads: 16, Intermediate: 4096, MaxPositions: 77, Activation: "gelu", EOSTokenID: 2},
		UNet: UNetConfig{
			BlockChannels:    []int{320, 640, 1280, 1280},
			CrossAttention:   []bool{true, true, true, false},
			LayersPerBlock:   2,
			LevelHeads:       []int{5, 10, 20, 20},
			LinearProjection: true,
			UpcastAttention:  true,
			CrossDim:         1024,
			InChannels:       4,
			OutChannels:      4,
			SampleSize:       96,
		},
		VAE:       sdVAE(0.18215, 768),
		Scheduler: SchedulerConfig{Class: "DDIMScheduler", Prediction: "v_prediction"},
	}
}

// TinySD2 is a tiny SD 2.x: gelu text encoder, linear projections, heads
// of 8 channels per level, v_prediction.
func TinySD2() Config {
	return Config{
		Name: "tiny-sd2",
		Text: TextConfig{Hidden: 48, Layers: 2, Heads: 4, Intermediate: 96, MaxPositions: 77, Activation: "gelu"},
		UNet: UNetConfig{
			BlockChannels:    []int{32, 64},
			CrossAttention:   []bool{true, false},
			LayersPerBlock:   1,
			LevelHeads:       []int{4, 8},
			LinearProjection: true,
			UpcastAttention:  true,
			InChannels:       4,
			OutChannels:      4,
			SampleSize:       12,
		},
		VAE:       VAEConfig{BlockChannels: []int{32, 32, 64, 64}, LayersPerBlock: 1, LatentChannels: 4, ScalingFactor: 0.18215, SampleSize: 96},
		Scheduler: SchedulerConfig{Class: "DDIMScheduler", Prediction: "v_prediction"},
	}
}

// SDXL returns the Stable Diffusion XL 1.0 base architecture: CLIP ViT-L
// (123,060,480 parameters) and OpenCLIP bigG with projection
// (694,659,840), UNet with transformer_layers_per_block (1, 2, 10), heads
// of 64, 2048-wide cross-attention and text_time embeddings
// (2,567,463,684), the SD VAE with scaling factor 0.13025 and
// force_upcast, and the Euler scheduler, at 1024×1024.
func SDXL() Config {
	return Config{
		Name:  "sdxl",
		Text:  TextConfig{Vocab: 49408, Hidden: 768, Layers: 12, Heads: 12, Intermediate: 3072, MaxPositions: 77, Activation: "quick_gelu", EOSTokenID: 2},
		Text2: &TextConfig{Vocab: 49408, Hidden: 1280, Layers: 32, Heads: 20, Intermediate: 5120, MaxPositions: 77, Activation: "gelu", ProjectionDim: 1280, EOSTokenID: 2},
		UNet: UNetConfig{
			BlockChannels:        []int{320, 640, 1280},
			CrossAttention:       []bool{false, true, true},
			LayersPerBlock:       2,
			LevelHeads:           []int{5, 10, 20},
			TransformerLayers:    []int{1, 2, 10},
			LinearProjection:     true,
			CrossDim:             2048,
			InChannels:           4,
			OutChannels:          4,
			SampleSize:           128,
			AdditionEmbed:        "text_time",
			AdditionTimeEmbedDim: 256,
			ProjectionInputDim:   2816,
		},
		VAE:       VAEConfig{BlockChannels: []int{128, 256, 512, 512}, LayersPerBlock: 2, LatentChannels: 4, ScalingFactor: 0.13025, ForceUpcast: true, SampleSize: 1024},
		Scheduler: SchedulerConfig{Class: "EulerDiscreteScheduler"},
	}
}

// TinySDXL returns the architecture of ../shared/reference/tiny-sdxl: text
// encoders of widths 32 (quick_gelu, 5 layers) and 48 (gelu, 3 layers,
// projection 40), a UNet with blocks (32, 64), transformer layers (1, 2),
// heads (2, 4), cross_attention_dim 80 and text_time embeddings of 8, and
// the tiny VAE with scaling factor 0.13025.
func TinySDXL() Config {
	return Config{
		Name:  "tiny-sdxl",
		Text:  TextConfig{Vocab: 49408, Hidden: 32, Layers: 5, Heads: 4, Intermediate: 37, MaxPositions: 77, Activation: "quick_gelu", EOSTokenID: 2},
		Text2: &TextConfig{Vocab: 49408, Hidden: 48, Layers: 3, Heads: 4, Intermediate: 61, MaxPositions: 77, Activation: "gelu", ProjectionDim: 40, EOSTokenID: 2},
		UNet: UNetConfig{
			BlockChannels:        []int{32, 64},
			CrossAttention:       []bool{false, true},
			LayersPerBlock:       2,
			LevelHeads:           []int{2, 4},
			TransformerLayers:    []int{1, 2},
			LinearProjection:     true,
			CrossDim:             80,
			InChannels:           4,
			OutChannels:          4,
			SampleSize:           8,
			AdditionEmbed:        "text_time",
			AdditionTimeEmbedDim: 8,
			ProjectionInputDim:   88,
		},
		VAE:       VAEConfig{BlockChannels: []int{32, 32, 64, 64}, LayersPerBlock: 1, LatentChannels: 4, ScalingFactor: 0.13025, ForceUpcast: true, SampleSize: 64},
		Scheduler: SchedulerConfig{Class: "EulerDiscreteScheduler"},
	}
}

// LCMSD15 returns the latent-consistency-distilled SD 1.5 architecture
// (SimianLuo/LCM_Dreamshaper_v7): SD 1.5 with time_cond_proj_dim 256
// (859,602,884 UNet parameters) and the LCM scheduler.
func LCMSD15() Config {
	c := SD15()
	c.Name = "lcm-sd15"
	c.UNet.TimeCondProjDim = 256
	c.Scheduler = SchedulerConfig{Class: "LCMScheduler"}
	return c
}

// TinyLCM is Tiny with a timestep_cond input of 16 and the LCM scheduler.
func TinyLCM() Config {
	c := Tiny()
	c.Name = "tiny-lcm"
	c.UNet.TimeCondProjDim = 16
	c.Scheduler = SchedulerConfig{Class: "LCMScheduler"}
	return c
}

// configs lists the configurations ConfigByName knows.
var configs = []func() Config{Tiny, SD15, TinyInpaint, SD15Inpaint, TinySD2, SD21, TinySDXL, SDXL, TinyLCM, LCMSD15}

// ConfigNames returns the names ConfigByName accepts.
func ConfigNames() []string {
	var names []string
	for _, c := range configs {
		names = append(names, c().Name)
	}
	return names
}

// ConfigByName returns the configuration of that name (see ConfigNames).
func ConfigByName(name string) (Config, error) {
	for _, c := range configs {
		if cfg := c(); cfg.Name == name {
			return cfg, nil
		}
	}
	return Config{}, fmt.Errorf("modelgen: unknown config %q (want one of %s)", name, strings.Join(ConfigNames(), ", "))
}
