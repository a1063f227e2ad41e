package ckpt

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// writeFolder writes the model folder into dir.
func writeFolder(ctx context.Context, dir string, f *File, m *Mapping, vae *File, vaeMap *Mapping, deltas map[Component]map[string][]ModuleDelta,
	cfg modelgen.Config, a *Arch, tokDir string, gopt modelgen.Options, extraTokens bool) (copied bool, err error) {
	folders := map[Component][]string{
		TextEncoder: {modelgen.TextEncoderDir}, UNet: {modelgen.UNetDir},
		VAE: {modelgen.VAEDecoderDir, modelgen.VAEEncoderDir},
	}
	if cfg.Text2 != nil {
		folders[TextEncoder2] = []string{"text_encoder_2"}
	}
	link := map[Component]string{}
	var firstCkpt, firstVAE string
	for c, ds := range folders {
		for _, d := range ds {
			p := filepath.Join(dir, d)
			if err := os.MkdirAll(p, 0o755); err != nil {
				return false, fmt.Errorf("ckpt: %w", err)
			}
			src, first := f.Path(), &firstCkpt
			if c == VAE && vae != nil {
				src, first = vae.Path(), &firstVAE
			}
			loc, cp, err := linkInto(p, src, *first)
			if err != nil {
				return false, err
			}
			if *first == "" {
				*first = filepath.Join(p, loc)
			}
			copied = copied || cp
			if have, ok := link[c]; ok && have != loc {
				return false, fmt.Errorf("ckpt: %s linked as %s and %s", c, have, loc)
			}
			link[c] = loc
		}
	}
	src := NewSource(f, m, vae, vaeMap, deltas, link)
	gopt.Source = src
	type model struct {
		dir   string
		build func() (*onnxpb.Model, error)
		vocab int // text encoders: the vocabulary size
	}
	vocab := cfg.Text.Vocab
	models := []model{
		{modelgen.TextEncoderDir, func() (*onnxpb.Model, error) { return modelgen.BuildTextEncoder(cfg, gopt, vocab) }, vocab},
		{modelgen.UNetDir, func() (*onnxpb.Model, error) { return modelgen.BuildUNet(cfg, gopt) }, 0},
		{modelgen.VAEDecoderDir, func() (*onnxpb.Model, error) { return modelgen.BuildVAEDecoder(cfg, gopt) }, 0},
		{modelgen.VAEEncoderDir, func() (*onnxpb.Model, error) { return modelgen.BuildVAEEncoder(cfg, gopt) }, 0},
	}
	if cfg.Text2 != nil {
		models = append(models, model{"text_encoder_2", func() (*onnxpb.Model, error) { return modelgen.BuildTextEncoder2(cfg, gopt, cfg.Text2.Vocab) }, cfg.Text2.Vocab})
	}
	for _, md := range models {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		mo, err := md.build()
		if err != nil {
			return false, fmt.Errorf("ckpt: building %s from %s: %w", md.dir, f.Path(), err)
		}
		if extraTokens && md.vocab > 0 {
			if err := addExtraTokens(mo, md.vocab); err != nil {
				return false, err
			}
		}
		// Tensors held in memory (merged or transposed weights) go to
		// weights.pb; references into the checkpoint stay as they are.
		if err := onnxpb.WriteFile(filepath.Join(dir, md.dir, modelgen.ModelFile), mo, &onnxpb.ExternalData{File: onnxpb.LegacyExternalFile, Threshold: 1024}); err != nil {
			return false, fmt.Errorf("ckpt: %w", err)
		}
	}
	comps := []Component{TextEncoder, UNet, VAE}
	if cfg.Text2 != nil {
		comps = append(comps, TextEncoder2)
	}
	if unused := src.Unused(comps...); len(unused) > 0 {
		return false, keysErr(fmt.Sprintf("%d converted parameters were not used by the %s graphs (a mapping error)", len(unused), a.Family), unused)
	}
	return copied, writeConfigs(dir, cfg, a, tokDir)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	return nil
}

// writeConfigs writes model_index.json, the scheduler, tokenizer and
// component configs of architecture a into dir.
func writeConfigs(dir string, cfg modelgen.Config, a *Arch, tokDir string) error {
	onnx := []any{"diffusers", "OnnxRuntimeModel"}
	class := "OnnxStableDiffusionPipeline"
	if a.Inpainting {
		class = "OnnxStableDiffusionInpaintPipeline"
	}
	index := map[string]any{
		"_class_name": class, "_diffusers_version": "0.35.2",
		"feature_extractor": []any{nil, nil}, "requires_safety_checker": false, "safety_checker": []any{nil, nil},
		"scheduler": []any{"diffusers", schedulerClass(a)}, "text_encoder": onnx, "tokenizer": []any{"transformers", "CLIPTokenizer"},
		"unet": onnx, "vae_decoder": onnx, "vae_encoder": onnx,
	}
	if cfg.Text2 != nil {
		index["_class_name"] = "ORTStableDiffusionXLPipeline"
		index["text_encoder_2"] = onnx
		index["tokenizer_2"] = []any{"transformers", "CLIPTokenizer"}
	}
	if err := writeJSON(filepath.Join(dir, "model_index.json"), index); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, modelgen.SchedulerDir), 0o755); err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	if err := writeJSON(filepath.Join(dir, modelgen.SchedulerDir, "scheduler_config.json"), SchedulerConfig(a)); err != nil {
		return err
	}
	toks := map[string]TextArch{modelgen.TokenizerDir: a.Text[0]}
	if len(a.Text) > 1 {
		toks["tokenizer_2"] = a.Text[1]
	}
	for d, t := range toks {
		p := filepath.Join(dir, d)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return fmt.Errorf("ckpt: %w", err)
		}
		for _, n := range []string{"vocab.json", "merges.txt"} {
			if err := copyFile(filepath.Join(p, n), filepath.Join(tokDir, n)); err != nil {
				return err
			}
		}
		special := map[string]any{"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": t.PadToken, "unk_token": "<|endoftext|>"}
		if err := writeJSON(filepath.Join(p, "special_tokens_map.json"), special); err != nil {
			return err
		}
		tc := map[string]any{"tokenizer_class": "CLIPTokenizer", "model_max_length": t.MaxPositions, "do_lower_case": true,
			"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": t.PadToken, "unk_token": "<|endoftext|>"}
		if err := writeJSON(filepath.Join(p, "tokenizer_config.json"), tc); err != nil {
			return err
		}
	}
	vae := map[string]any{
		"_class_name": "AutoencoderKL", "block_out_channels": cfg.VAE.BlockChannels, "in_channels": 3, "out_channels": 3,
		"latent_channels": cfg.VAE.LatentChannels, "layers_per_block": cfg.VAE.LayersPerBlock, "norm_num_groups": 32,
		"scaling_factor": cfg.VAE.ScalingFactor, "force_upcast": cfg.VAE.ForceUpcast, "sample_size": cfg.VAE.SampleSize,
	}
	for _, d := range []string{modelgen.VAEDecoderDir, modelgen.VAEEncoderDir} {
		if err := writeJSON(filepath.Join(dir, d, "config.json"), vae); err != nil {
			return err
		}
	}
	uc := map[string]any{"sample_size": cfg.UNet.SampleSize, "in_channels": cfg.UNet.InChannels, "out_channels": cfg.UNet.OutChannels}
	return writeJSON(filepath.Join(dir, modelgen.UNetDir, "config.json"), uc)
}

func schedulerClass(a *Arch) string {
	switch a.Family {
	case SD2:
		if !a.Inpainting {
			return "DDIMScheduler"
		}
	case SDXL, SDXLRefiner:
		return "EulerDiscreteScheduler"
	}
	return "PNDMScheduler"
}

// SchedulerConfig returns the scheduler_config.json the released models of
// a's family ship with (SD 1.x and SD 2 inpainting: PNDM; SD 2.x: DDIM;
// SDXL: Euler), with a's prediction type.
func SchedulerConfig(a *Arch) map[string]any {
	c := map[string]any{
		"_class_name": schedulerClass(a), "_diffusers_version": "0.35.2",
		"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
		"prediction_type": a.Prediction, "set_alpha_to_one": false, "steps_offset": 1, "timestep_spacing": "leading",
		"trained_betas": nil,
	}
	switch c["_class_name"] {
	case "PNDMScheduler":
		c["clip_sample"], c["skip_prk_steps"] = false, true
	case "DDIMScheduler":
		c["clip_sample"], c["skip_prk_steps"] = false, true
	case "EulerDiscreteScheduler":
		c["interpolation_type"], c["use_karras_sigmas"], c["sample_max_value"] = "linear", false, 1.0
	}
	return c
}
