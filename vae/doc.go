// Package vae runs the AutoencoderKL halves of a Stable Diffusion model
// exported to ONNX: the decoder (vae_decoder/, latents to pixels) and the
// encoder (vae_encoder/, pixels to latents, for img2img). Both also run in
// overlapping tiles blended as diffusers' VAE tiling blends them
// (Decoder.DecodeTiled, Encoder.EncodeTiled), so that a large image needs
// one tile's memory per call. TAESDDecoder and TAESDEncoder run the tiny
// autoencoder TAESD (madebyollin/taesd), for previews and fast decoding.
package vae
