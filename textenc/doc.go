// Package textenc runs a CLIP text encoder exported to ONNX (the
// text_encoder/ folder of a diffusers ONNX model): token ids in, one hidden
// state per token out.
package textenc
