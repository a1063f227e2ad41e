// Package unet runs a Stable Diffusion UNet exported to ONNX (the unet/
// folder of a diffusers ONNX model): one noise prediction per call.
package unet
