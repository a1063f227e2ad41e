package modelgen

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Component folder names of the diffusers ONNX layout.
const (
	TextEncoderDir = "text_encoder"
	UNetDir        = "unet"
	VAEDecoderDir  = "vae_decoder"
	VAEEncoderDir  = "vae_encoder"
	TokenizerDir   = "tokenizer"
	SchedulerDir   = "scheduler"
	ModelFile      = "model.onnx"
)

// Write generates a complete diffusers ONNX model folder in dir (created if
// needed): model_index.json (legacy OnnxStableDiffusionPipeline),
// scheduler/scheduler_config.json (the SD 1.x PNDM configuration),
// tokenizer/ (a generated CLIP-format vocabulary whose size the text
// encoder matches unless cfg.Text.Vocab is set), text_encoder/model.onnx,
// unet/model.onnx with its weights in an external file, vae_decoder/
// (model.onnx and config.json) and vae_encoder/model.onnx. Weights are
// generated and written one tensor at a time, so SD15 needs little memory
// (but several GB of disk, and minutes). Write is safe for concurrent use on
// distinct directories.
func Write(dir string, cfg Config, opt Options) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := opt.validate(); err != nil {
		return err
	}
	if cfg.Text2 != nil {
		return fmt.Errorf("modelgen: config %q: writing two-text-encoder folders is not supported yet", cfg.Name)
	}
	for _, d := range []string{TextEncoderDir, UNetDir, VAEDecoderDir, VAEEncoderDir, TokenizerDir, SchedulerDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("modelgen: %w", err)
		}
	}
	if err := writeJSON(filepath.Join(dir, "model_index.json"), modelIndex()); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, SchedulerDir, "scheduler_config.json"), schedulerConfig()); err != nil {
		return err
	}
	vocab := GenerateVocabulary(0)
	if err := vocab.WriteFiles(filepath.Join(dir, TokenizerDir), cfg.Text.MaxPositions); err != nil {
		return err
	}
	if cfg.Text.Vocab > 0 && cfg.Text.Vocab < vocab.Size() {
		return fmt.Errorf("modelgen: config %q: text vocabulary %d is smaller than the tokenizer's %d", cfg.Name, cfg.Text.Vocab, vocab.Size())
	}

	te, err := BuildTextEncoder(cfg, opt, vocab.Size())
	if err != nil {
		return err
	}
	if err := writeModel(dir, TextEncoderDir, te, nil); err != nil {
		return err
	}
	un, err := BuildUNet(cfg, opt)
	if err != nil {
		return err
	}
	ext := opt.ExternalFile
	if ext == "" {
		ext = onnxpb.LegacyExternalFile
	}
	if err := writeModel(dir, UNetDir, un, &onnxpb.ExternalData{File: ext, Threshold: 1024}); err != nil {
		return err
	}
	if cfg.UNet.SampleSize > 0 {
		uc := map[string]any{"sample_size": cfg.UNet.SampleSize, "in_channels": cfg.UNet.InChannels, "out_channels": cfg.UNet.OutChannels}
		if err := writeJSON(filepath.Join(dir, UNetDir, "config.json"), uc); err != nil {
			return err
		}
	}
	dec, err := BuildVAEDecoder(cfg, opt)
	if err != nil {
		return err
	}
	if err := writeModel(dir, VAEDecoderDir, dec, nil); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, VAEDecoderDir, "config.json"), vaeConfig(cfg.VAE)); err != nil {
		return err
	}
	enc, err := BuildVAEEncoder(cfg, opt)
	if err != nil {
		return err
	}
	return writeModel(dir, VAEEncoderDir, enc, nil)
}

func writeModel(dir, component string, m *onnxpb.Model, ext *onnxpb.ExternalData) error {
	if err := onnxpb.WriteFile(filepath.Join(dir, component, ModelFile), m, ext); err != nil {
		return fmt.Errorf("modelgen: %s: %w", component, err)
	}
	return nil
}

func writeJSON(path string, v any) error {
	b, err := marshalJSON(v)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("modelgen: %w", err)
	}
	return nil
}

func modelIndex() map[string]any {
	onnx := []any{"diffusers", "OnnxRuntimeModel"}
	return map[string]any{
		"_class_name":             "OnnxStableDiffusionPipeline",
		"_diffusers_version":      "0.24.0",
		"feature_extractor":       []any{nil, nil},
		"requires_safety_checker": false,
		"safety_checker":          []any{nil, nil},
		"scheduler":               []any{"diffusers", "PNDMScheduler"},
		"text_encoder":            onnx,
		"tokenizer":               []any{"transformers", "CLIPTokenizer"},
		"unet":                    onnx,
		"vae_decoder":             onnx,
		"vae_encoder":             onnx,
	}
}

// schedulerConfig is the PNDM configuration SD 1.x ships with.
func schedulerConfig() map[string]any {
	return map[string]any{
		"_class_name":         "PNDMScheduler",
		"_diffusers_version":  "0.24.0",
		"beta_end":            0.012,
		"beta_schedule":       "scaled_linear",
		"beta_start":          0.00085,
		"clip_sample":         false,
		"num_train_timesteps": 1000,
		"prediction_type":     "epsilon",
		"set_alpha_to_one":    false,
		"skip_prk_steps":      true,
		"steps_offset":        1,
		"timestep_spacing":    "leading",
		"trained_betas":       nil,
	}
}

func vaeConfig(v VAEConfig) map[string]any {
	return map[string]any{
		"_class_name":        "AutoencoderKL",
		"_diffusers_version": "0.24.0",
		"block_out_channels": v.BlockChannels,
		"in_channels":        3,
		"out_channels":       3,
		"latent_channels":    v.LatentChannels,
		"layers_per_block":   v.LayersPerBlock,
		"norm_num_groups":    32,
		"scaling_factor":     v.ScalingFactor,
	}
}
