// Package sd is the facade most programs import: it opens a Stable Diffusion
// model folder exported to ONNX and runs it on ONNX Runtime.
//
// OpenFolder reads a folder in the diffusers ONNX layout, as written by
// diffusers' legacy exporter (convert_stable_diffusion_checkpoint_to_onnx.py)
// or by optimum (optimum-cli export onnx):
//
//	model_index.json
//	scheduler/scheduler_config.json
//	tokenizer/vocab.json, merges.txt (+ tokenizer_config.json, special_tokens_map.json)
//	text_encoder/model.onnx
//	unet/model.onnx (+ weights.pb or model.onnx_data)
//	vae_decoder/model.onnx
//	vae_encoder/model.onnx (optional: image-to-image only)
//
// Every name, element type and shape is read from the models themselves, so
// float16 exports, int64 token ids, the timestep variants and fixed-batch
// exports all load. Before any weights are loaded, OpenFolder checks the
// folder and reports each problem as a *FolderError naming the file: a
// missing or malformed file, a truncated model, a missing external data file,
// a model with the wrong inputs, or components that do not fit together
// (ErrMismatch).
//
// Load-time settings are functional options (WithDevice, WithThreads, ...)
// that only record values; OpenFolder validates them all at once.
//
// Library code never prints: pass WithLogger to see what is loaded.
package sd
