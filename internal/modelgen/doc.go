// Package modelgen builds Stable-Diffusion-architecture ONNX graphs in Go,
// and writes them as model folders in the diffusers ONNX layout users
// download: tiny ones for tests (Tiny) and full SD 1.5-size ones for
// benchmarks (SD15).
//
// Write produces a whole folder; BuildTextEncoder, BuildUNet,
// BuildVAEDecoder and BuildVAEEncoder return the component graphs. Their
// weights come from a Source (Options.Source), asked for each parameter by
// its diffusers/transformers state-dict name and PyTorch shape. The default,
// RandomSource, draws deterministic random values lazily
// (onnxpb.Tensor.Fill) from a SplitMix64 stream keyed by Options.Seed and
// the parameter's name, so they do not depend on build order and a
// multi-gigabyte model is never held in memory. A Source may instead return
// references into an existing file (onnxpb.ExternalRef), e.g. a checkpoint,
// which are written as ONNX external data without copying a byte; the graph
// adapts to the Source's layout and float type (Transpose and Cast nodes
// that ONNX Runtime folds at load). A missing or malformed parameter is a
// build error naming it. Options.OnModule is called after every Linear and
// Conv module and may replace its output (e.g. with a low-rank branch).
// Builder is the small graph-building DSL underneath.
//
// With random weights, values are scaled so activations stay finite and of
// order one: the UNet predicts roughly unit-variance noise, so a 50-step
// denoising loop stays bounded. Such models compute nothing meaningful.
//
// Functions in this package are safe for concurrent use (with a Source
// that is); a Builder is not.
package modelgen
