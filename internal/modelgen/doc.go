// Package modelgen builds Stable-Diffusion-architecture ONNX graphs in Go,
// and writes them as model folders in the layouts users download.
//
// A Config describes an architecture with the values diffusers' and
// transformers' configs carry (ParseUNetConfig, ParseTextConfig and
// ParseVAEConfig read them from config.json files): SD 1.x (SD15, Tiny),
// inpainting UNets with 9 input channels (SD15Inpaint, TinyInpaint),
// SD 2.x with its OpenCLIP text encoder and v-prediction (SD21, TinySD2),
// SDXL with two text encoders and text_time embeddings (SDXL, TinySDXL)
// and latent-consistency UNets with a timestep_cond input (LCMSD15,
// TinyLCM). The full-size constructors have exactly the real models'
// parameter counts; TAESDConfig describes the tiny autoencoder TAESD
// (FullTAESD, TinyTAESD). The builder computes what diffusers and
// transformers compute: the tests reproduce diffusers' PyTorch outputs on
// the reference tiny SD 1.x and SDXL models within 1.4e-6.
//
// Write produces a whole folder in diffusers' legacy ONNX layout or
// optimum's (Options.Layout), WriteTAESD a TAESD folder; BuildTextEncoder,
// BuildTextEncoder2, BuildUNet, BuildVAEDecoder, BuildVAEEncoder,
// BuildTAESDEncoder and BuildTAESDDecoder return the component graphs, with
// the inputs, outputs and dtypes the real exporters write and their
// variants as Options. Weights come from a Source (Options.Source), asked
// for each parameter by its diffusers/transformers state-dict name and
// PyTorch shape. The default, RandomSource, draws deterministic random
// values lazily (onnxpb.Tensor.Fill) from a SplitMix64 stream keyed by
// Options.Seed and the parameter's name, so they do not depend on build
// order and a multi-gigabyte model is never held in memory. A Source may
// instead return references into an existing file (onnxpb.ExternalRef),
// e.g. a checkpoint, which are written as ONNX external data without
// copying a byte; the graph adapts to the Source's layout and float type
// (Transpose and Cast nodes that ONNX Runtime folds at load). A missing or
// malformed parameter is a build error naming it. Options.OnModule is
// called after every Linear and Conv module and may replace its output
// (e.g. with a low-rank branch). Builder is the small graph-building DSL
// underneath.
//
// With random weights, values are scaled so activations stay finite and of
// order one: the UNet predicts roughly unit-variance noise, so a 50-step
// denoising loop stays bounded. Such models compute nothing meaningful.
//
// Functions in this package are safe for concurrent use (with a Source
// that is); a Builder is not.
package modelgen
