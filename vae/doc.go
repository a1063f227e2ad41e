// Package vae runs the AutoencoderKL halves of a Stable Diffusion model
// exported to ONNX: the decoder (vae_decoder/, latents to pixels) and the
// encoder (vae_encoder/, pixels to latents, for img2img).
package vae
