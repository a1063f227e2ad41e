// Package models holds the project's embedded default model: a tiny
// Stable-Diffusion-shaped model (CLIP-style text encoder with its own BPE
// vocabulary, a UNet with cross-attention, an AutoencoderKL-style VAE with
// SD's 8x factor, SD's PNDM scheduler config) trained by training/train.py
// on procedurally generated 64x64 images of coloured shapes on coloured
// backgrounds, with captions such as "a red circle on a blue background" or
// "a small green triangle in the top left". It makes recognisable images in
// milliseconds, so a first run needs no download.
//
// The model is committed in the diffusers legacy ONNX layout under
// models/default and embedded with go:embed. ONNX Runtime opens models by
// path, so DefaultDir writes the files once into a per-user cache folder
// named after their content hash and returns its path; FS gives the files
// without touching the disk.
//
// The model describes itself in sdpipe.json beside model_index.json: its
// name, its defaults (64×64 at guidance scale 2.5, not diffusers' 7.5:
// training/README.md, "Guidance", says why) and the words its prompts may
// use. sd.Open reads that file, so a program that opens the model gets
// them with no special case.
//
// The package imports nothing of the project.
package models
