package modelgen

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Component folder names of the diffusers ONNX layout.
const (
	TextEncoderDir  = "text_encoder"
	TextEncoder2Dir = "text_encoder_2"
	UNetDir         = "unet"
	VAEDecoderDir   = "vae_decoder"
	VAEEncoderDir   = "vae_encoder"
	TokenizerDir    = "tokenizer"
	Tokenizer2Dir   = "tokenizer_2"
	SchedulerDir    = "scheduler"
	ModelFile       = "model.onnx"
	ConfigFile      = "config.json"
)

// maxInline is the largest component written without external data (the
// protobuf limit, 2 GiB, less room for the graph).
const maxInline = 2<<30 - 64<<20

// diffusersVersion is the _diffusers_version written into configs.
const diffusersVersion = "0.35.2"

// Write generates a complete diffusers ONNX model folder in dir (created if
// needed) for cfg, in the layout opt selects (see Layout):
//
//	model_index.json              the pipeline and its components
//	scheduler/scheduler_config.json  cfg.Scheduler with SD's betas
//	tokenizer/                    a generated CLIP-format vocabulary (the text encoders match its size unless Text.Vocab is set)
//	tokenizer_2/                  SDXL: the same vocabulary, padded with "!" as SDXL's tokenizer_2 is
//	text_encoder/model.onnx
//	text_encoder_2/model.onnx     SDXL
//	unet/model.onnx               + weights.pb (Legacy) or model.onnx_data (Optimum, over 2 GB or when asked)
//	vae_decoder/model.onnx
//	vae_encoder/model.onnx
//
// with config.json files beside the models: in the Legacy layout unet/ and
// vae_decoder/ (a superset of what diffusers' exporter writes, which the
// loaders read for sample_size and scaling_factor), in the Optimum layout
// every component (as optimum's ORT pipelines require). Weights are
// produced and written one tensor at a time, so full-size models need
// little memory (but gigabytes of disk, and minutes). Write is safe for
// concurrent use on distinct directories.
func Write(dir string, cfg Config, opt Options) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	if err := opt.validate(); err != nil {
		return err
	}
	opt = opt.resolve(cfg)
	sdxl := cfg.Text2 != nil
	dirs := []string{TextEncoderDir, UNetDir, VAEDecoderDir, VAEEncoderDir, TokenizerDir, SchedulerDir}
	if sdxl {
		dirs = append(dirs, TextEncoder2Dir, Tokenizer2Dir)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("modelgen: %w", err)
		}
	}
	if err := writeJSON(filepath.Join(dir, "model_index.json"), modelIndex(cfg, opt)); err != nil {
		return err
	}
	if err := writeJSON(filepath.Join(dir, SchedulerDir, "scheduler_config.json"), schedulerConfig(cfg.Scheduler)); err != nil {
		return err
	}
	vocab := GenerateVocabulary(0)
	if err := vocab.WriteFiles(filepath.Join(dir, TokenizerDir), cfg.Text.MaxPositions); err != nil {
		return err
	}
	for _, tc := range []*TextConfig{&cfg.Text, cfg.Text2} {
		if tc != nil && tc.Vocab > 0 && tc.Vocab < vocab.Size() {
			return fmt.Errorf("modelgen: config %q: text vocabulary %d is smaller than the tokenizer's %d", cfg.Name, tc.Vocab, vocab.Size())
		}
	}

	var teConfig, encConfig any // the optimum layout has them
	if opt.optimum() {
		teConfig, encConfig = textConfigJSON(cfg.Text, false), vaeConfigJSON(cfg.VAE)
	}
	te, err := BuildTextEncoder(cfg, opt, vocab.Size())
	if err := writeBuilt(dir, TextEncoderDir, te, err, opt, false, teConfig); err != nil {
		return err
	}
	if sdxl {
		if err := vocab.WriteTokenizer(filepath.Join(dir, Tokenizer2Dir), cfg.Text2.MaxPositions, "!"); err != nil {
			return err
		}
		te2, err := BuildTextEncoder2(cfg, opt, vocab.Size())
		if err := writeBuilt(dir, TextEncoder2Dir, te2, err, opt, opt.ExternalFile != "", textConfigJSON(*cfg.Text2, true)); err != nil {
			return err
		}
	}
	un, err := BuildUNet(cfg, opt)
	if err := writeBuilt(dir, UNetDir, un, err, opt, !opt.optimum() || opt.ExternalFile != "", unetConfigJSON(cfg.UNet, cfg.crossDim())); err != nil {
		return err
	}
	dec, err := BuildVAEDecoder(cfg, opt)
	if err := writeBuilt(dir, VAEDecoderDir, dec, err, opt, false, vaeConfigJSON(cfg.VAE)); err != nil {
		return err
	}
	enc, err := BuildVAEEncoder(cfg, opt)
	return writeBuilt(dir, VAEEncoderDir, enc, err, opt, false, encConfig)
}

// writeBuilt writes m, which its builder returned with err, as
// dir/component (writeComponent), then config, when it is not nil, as the
// component's config.json.
func writeBuilt(dir, component string, m *onnxpb.Model, err error, opt Options, external bool, config any) error {
	if err != nil {
		return err
	}
	if err := writeComponent(dir, component, m, opt, external); err != nil {
		return err
	}
	if config == nil {
		return nil
	}
	return writeJSON(filepath.Join(dir, component, ConfigFile), config)
}

// WriteTAESD writes a TAESD model folder in dir: vae_encoder/ and
// vae_decoder/ (model.onnx and an AutoencoderTiny config.json each), with
// the inputs and outputs of the AutoencoderKL components they stand in
// for.
func WriteTAESD(dir string, tc TAESDConfig, opt Options) error {
	enc, err := BuildTAESDEncoder(tc, opt)
	if err != nil {
		return err
	}
	dec, err := BuildTAESDDecoder(tc, opt)
	if err != nil {
		return err
	}
	for c, m := range map[string]*onnxpb.Model{VAEEncoderDir: enc, VAEDecoderDir: dec} {
		if err := os.MkdirAll(filepath.Join(dir, c), 0o755); err != nil {
			return fmt.Errorf("modelgen: %w", err)
		}
		if err := writeModel(dir, c, m, nil); err != nil {
			return err
		}
		if err := writeJSON(filepath.Join(dir, c, ConfigFile), taesdConfigJSON(tc)); err != nil {
			return err
		}
	}
	return nil
}

// writeComponent writes one component, its weights in an external file
// when external is set or the model would not fit in one protobuf.
func writeComponent(dir, component string, m *onnxpb.Model, opt Options, external bool) error {
	var size int64
	for _, t := range m.Graph.Initializer {
		size += t.NumElements() * int64(t.DataType.Size())
	}
	if !external && size < maxInline {
		return writeModel(dir, component, m, nil)
	}
	name := opt.ExternalFile
	if name == "" {
		name = onnxpb.LegacyExternalFile
		if opt.optimum() {
			name = onnxpb.OptimumExternalFile
		}
	}
	return writeModel(dir, component, m, &onnxpb.ExternalData{File: name, Threshold: 1024})
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

// modelIndex is model_index.json: the legacy OnnxStableDiffusion*Pipeline
// index, or the diffusers pipeline's own index that optimum saves.
func modelIndex(cfg Config, opt Options) map[string]any {
	inpaint := cfg.UNet.InChannels == 9
	sched := cfg.Scheduler.Class
	if sched == "" {
		sched = "PNDMScheduler"
	}
	none := []any{nil, nil}
	if !opt.optimum() {
		onnx := []any{"diffusers", "OnnxRuntimeModel"}
		class := "OnnxStableDiffusionPipeline"
		if inpaint {
			class = "OnnxStableDiffusionInpaintPipeline"
		}
		return map[string]any{
			"_class_name":             class,
			"_diffusers_version":      "0.24.0",
			"feature_extractor":       none,
			"requires_safety_checker": false,
			"safety_checker":          none,
			"scheduler":               []any{"diffusers", sched},
			"text_encoder":            onnx,
			"tokenizer":               []any{"transformers", "CLIPTokenizer"},
			"unet":                    onnx,
			"vae_decoder":             onnx,
			"vae_encoder":             onnx,
		}
	}
	m := map[string]any{
		"_diffusers_version": diffusersVersion,
		"feature_extractor":  none,
		"image_encoder":      none,
		"scheduler":          []any{"diffusers", sched},
		"text_encoder":       []any{"transformers", "CLIPTextModel"},
		"tokenizer":          []any{"transformers", "CLIPTokenizer"},
		"unet":               []any{"diffusers", "UNet2DConditionModel"},
		"vae":                []any{"diffusers", "AutoencoderKL"},
	}
	switch {
	case cfg.Text2 != nil:
		m["_class_name"] = "StableDiffusionXLPipeline"
		if inpaint {
			m["_class_name"] = "StableDiffusionXLInpaintPipeline"
		}
		m["force_zeros_for_empty_prompt"] = true
		m["text_encoder_2"] = []any{"transformers", "CLIPTextModelWithProjection"}
		m["tokenizer_2"] = []any{"transformers", "CLIPTokenizer"}
	case cfg.UNet.TimeCondProjDim > 0:
		m["_class_name"] = "LatentConsistencyModelPipeline"
		m["safety_checker"] = none
		m["requires_safety_checker"] = false
	default:
		m["_class_name"] = "StableDiffusionPipeline"
		if inpaint {
			m["_class_name"] = "StableDiffusionInpaintPipeline"
		}
		m["safety_checker"] = none
		m["requires_safety_checker"] = false
	}
	return m
}

// schedulerConfig is the scheduler_config.json of s with SD's training
// schedule (scaled_linear betas 0.00085–0.012 over 1000 steps), in the
// form each class's released models ship it: PNDM as SD 1.x, DDIM as SD
// 2.x, Euler as SDXL base, LCM as LCM Dreamshaper v7.
func schedulerConfig(s SchedulerConfig) map[string]any {
	class, pred, spacing := s.Class, s.Prediction, s.Spacing
	if class == "" {
		class = "PNDMScheduler"
	}
	if pred == "" {
		pred = "epsilon"
	}
	if spacing == "" {
		spacing = "leading"
	}
	m := map[string]any{
		"_class_name":         class,
		"_diffusers_version":  diffusersVersion,
		"beta_end":            0.012,
		"beta_schedule":       "scaled_linear",
		"beta_start":          0.00085,
		"clip_sample":         false,
		"num_train_timesteps": 1000,
		"prediction_type":     pred,
		"set_alpha_to_one":    false,
		"skip_prk_steps":      true,
		"steps_offset":        1,
		"timestep_spacing":    spacing,
		"trained_betas":       nil,
	}
	switch class {
	case "PNDMScheduler":
		m["_diffusers_version"] = "0.24.0"
	case "EulerDiscreteScheduler":
		for k, v := range map[string]any{
			"final_sigmas_type": "zero", "interpolation_type": "linear", "rescale_betas_zero_snr": false,
			"sample_max_value": 1.0, "sigma_max": nil, "sigma_min": nil, "timestep_type": "discrete",
			"use_beta_sigmas": false, "use_exponential_sigmas": false, "use_karras_sigmas": false,
		} {
			m[k] = v
		}
	case "LCMScheduler":
		delete(m, "skip_prk_steps")
		for k, v := range map[string]any{
			"clip_sample_range": 1.0, "dynamic_thresholding_ratio": 0.995, "original_inference_steps": 50,
			"rescale_betas_zero_snr": false, "sample_max_value": 1.0, "set_alpha_to_one": true,
			"thresholding": false, "timestep_scaling": 10.0,
		} {
			m[k] = v
		}
	}
	return m
}

// textConfigJSON is the transformers CLIPTextConfig of t (config.json).
func textConfigJSON(t TextConfig, withProjection bool) map[string]any {
	proj := t.ProjectionDim
	if !withProjection {
		proj = t.Hidden
	}
	eos := t.EOSTokenID
	if eos == 0 {
		eos = 2
	}
	m := map[string]any{
		"attention_dropout":       0.0,
		"bos_token_id":            0,
		"eos_token_id":            eos,
		"hidden_act":              t.activation(),
		"hidden_size":             t.Hidden,
		"initializer_factor":      1.0,
		"initializer_range":       0.02,
		"intermediate_size":       t.Intermediate,
		"layer_norm_eps":          1e-05,
		"max_position_embeddings": t.MaxPositions,
		"model_type":              "clip_text_model",
		"num_attention_heads":     t.Heads,
		"num_hidden_layers":       t.Layers,
		"output_hidden_states":    true,
		"pad_token_id":            1,
		"projection_dim":          proj,
		"transformers_version":    "4.34.0.dev0",
		"vocab_size":              t.Vocab,
	}
	if withProjection {
		m["architectures"] = []any{"CLIPTextModelWithProjection"}
	} else {
		m["architectures"] = []any{"CLIPTextModel"}
	}
	return m
}

// unetConfigJSON is the diffusers UNet2DConditionModel config of u.
func unetConfigJSON(u UNetConfig, crossDim int) map[string]any {
	var down, up []any
	n := len(u.BlockChannels)
	for i := range n {
		if u.CrossAttention[i] {
			down = append(down, "CrossAttnDownBlock2D")
		} else {
			down = append(down, "DownBlock2D")
		}
		if u.CrossAttention[n-1-i] {
			up = append(up, "CrossAttnUpBlock2D")
		} else {
			up = append(up, "UpBlock2D")
		}
	}
	var heads any = u.Heads
	if len(u.LevelHeads) > 0 {
		heads = u.LevelHeads
	}
	var layers any = 1
	if len(u.TransformerLayers) > 0 {
		layers = u.TransformerLayers
	}
	nullIf0 := func(v int) any {
		if v == 0 {
			return nil
		}
		return v
	}
	var add any
	if u.AdditionEmbed != "" {
		add = u.AdditionEmbed
	}
	return map[string]any{
		"_class_name":                           "UNet2DConditionModel",
		"_diffusers_version":                    diffusersVersion,
		"act_fn":                                "silu",
		"addition_embed_type":                   add,
		"addition_embed_type_num_heads":         64,
		"addition_time_embed_dim":               nullIf0(u.AdditionTimeEmbedDim),
		"attention_head_dim":                    heads,
		"attention_type":                        "default",
		"block_out_channels":                    u.BlockChannels,
		"center_input_sample":                   false,
		"class_embed_type":                      nil,
		"class_embeddings_concat":               false,
		"conv_in_kernel":                        3,
		"conv_out_kernel":                       3,
		"cross_attention_dim":                   crossDim,
		"cross_attention_norm":                  nil,
		"down_block_types":                      down,
		"downsample_padding":                    1,
		"dropout":                               0.0,
		"dual_cross_attention":                  false,
		"encoder_hid_dim":                       nil,
		"encoder_hid_dim_type":                  nil,
		"flip_sin_to_cos":                       true,
		"freq_shift":                            0,
		"in_channels":                           u.InChannels,
		"layers_per_block":                      u.LayersPerBlock,
		"mid_block_only_cross_attention":        nil,
		"mid_block_scale_factor":                1,
		"mid_block_type":                        "UNetMidBlock2DCrossAttn",
		"norm_eps":                              1e-05,
		"norm_num_groups":                       32,
		"num_attention_heads":                   nil,
		"num_class_embeds":                      nil,
		"only_cross_attention":                  false,
		"out_channels":                          u.OutChannels,
		"projection_class_embeddings_input_dim": nullIf0(u.ProjectionInputDim),
		"resnet_out_scale_factor":               1.0,
		"resnet_skip_time_act":                  false,
		"resnet_time_scale_shift":               "default",
		"reverse_transformer_layers_per_block":  nil,
		"sample_size":                           u.SampleSize,
		"time_cond_proj_dim":                    nullIf0(u.TimeCondProjDim),
		"time_embedding_act_fn":                 nil,
		"time_embedding_dim":                    nil,
		"time_embedding_type":                   "positional",
		"timestep_post_act":                     nil,
		"transformer_layers_per_block":          layers,
		"up_block_types":                        up,
		"upcast_attention":                      u.UpcastAttention,
		"use_linear_projection":                 u.LinearProjection,
	}
}

// vaeConfigJSON is the diffusers AutoencoderKL config of v.
func vaeConfigJSON(v VAEConfig) map[string]any {
	var down, up []any
	for range v.BlockChannels {
		down = append(down, "DownEncoderBlock2D")
		up = append(up, "UpDecoderBlock2D")
	}
	return map[string]any{
		"_class_name":             "AutoencoderKL",
		"_diffusers_version":      diffusersVersion,
		"act_fn":                  "silu",
		"block_out_channels":      v.BlockChannels,
		"down_block_types":        down,
		"force_upcast":            v.ForceUpcast,
		"in_channels":             3,
		"latent_channels":         v.LatentChannels,
		"latents_mean":            nil,
		"latents_std":             nil,
		"layers_per_block":        v.LayersPerBlock,
		"mid_block_add_attention": true,
		"norm_num_groups":         32,
		"out_channels":            3,
		"sample_size":             v.SampleSize,
		"scaling_factor":          v.ScalingFactor,
		"shift_factor":            nil,
		"up_block_types":          up,
		"use_post_quant_conv":     true,
		"use_quant_conv":          true,
	}
}

// taesdConfigJSON is the diffusers AutoencoderTiny config of t.
func taesdConfigJSON(t TAESDConfig) map[string]any {
	ch := func(n int) []int {
		c := make([]int, n)
		for i := range c {
			c[i] = t.Channels
		}
		return c
	}
	return map[string]any{
		"_class_name":                "AutoencoderTiny",
		"_diffusers_version":         diffusersVersion,
		"act_fn":                     "relu",
		"block_out_channels":         ch(len(t.DecoderBlocks)),
		"decoder_block_out_channels": ch(len(t.DecoderBlocks)),
		"encoder_block_out_channels": ch(len(t.EncoderBlocks)),
		"force_upcast":               false,
		"in_channels":                3,
		"latent_channels":            t.LatentChannels,
		"latent_magnitude":           3,
		"latent_shift":               0.5,
		"num_decoder_blocks":         t.DecoderBlocks,
		"num_encoder_blocks":         t.EncoderBlocks,
		"out_channels":               3,
		"scaling_factor":             1.0,
		"shift_factor":               0.0,
		"upsample_fn":                "nearest",
		"upsampling_scaling_factor":  2,
	}
}
