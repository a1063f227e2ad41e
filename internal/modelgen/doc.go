// Package modelgen generates Stable-Diffusion-architecture ONNX models with
// deterministic random weights, in the diffusers ONNX folder layout that
// users download: tiny ones for tests (Tiny) and full SD 1.5-size ones for
// benchmarks (SD15).
//
// Write produces a whole folder; BuildTextEncoder, BuildUNet,
// BuildVAEDecoder and BuildVAEEncoder return the component graphs, whose
// weights are produced lazily (onnxpb.Tensor.Fill) from a SplitMix64 stream
// keyed by Options.Seed and the parameter's diffusers/transformers name, so
// they do not depend on build order and a multi-gigabyte model is never held
// in memory. Builder is the small graph-building DSL underneath.
//
// Weights are scaled so activations stay finite and of order one: the UNet
// predicts roughly unit-variance noise, so a 50-step denoising loop stays
// bounded. The models compute nothing meaningful.
//
// Functions in this package are safe for concurrent use; a Builder is not.
package modelgen
