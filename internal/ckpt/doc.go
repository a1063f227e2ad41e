// Package ckpt understands the single files people download for Stable
// Diffusion: original (CompVis/LDM layout) checkpoints, separate VAE files,
// kohya/AUTOMATIC1111 LoRA files and textual-inversion embeddings.
//
// Detect reads a checkpoint's architecture from its key names and tensor
// shapes the way diffusers' single-file loader does (SD 1.x, SD 2.x with its
// OpenCLIP text encoder, SDXL base and refiner, 9-channel inpainting), and
// Convert maps every original key to the diffusers component and state-dict
// key that the graph builder asks for, with the few layout changes the
// conversion needs (OpenCLIP's fused in_proj split into q/k/v row ranges, a
// transposed text_projection, 1×1 conv kernels read as Linear weights). The
// keys real files carry besides the model (EMA copies, noise-schedule
// buffers, position_ids) are ignored; any other key that cannot be placed is
// an error that names it.
//
// Nothing here reads tensor data except what LoRA merging and embeddings
// need: the mapping refers to the checkpoint's own bytes, so that the graphs
// can point into the file instead of copying it.
package ckpt
