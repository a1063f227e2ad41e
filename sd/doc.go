// Package sd runs Stable Diffusion on ONNX Runtime: it opens a model
// folder exported to ONNX and generates images from text (and from
// images), many requests in flight at once. It is the one package a
// program needs (with package models for the embedded default model):
//
//	dir, err := models.DefaultDir() // or any diffusers ONNX folder
//	...
//	m, err := sd.Open(ctx, dir)
//	...
//	defer m.Close()
//	res, err := m.Generate(ctx, sd.Request{Prompt: "a red circle on a blue background", Seed: 7})
//	...
//	err = res.EncodePNG(f, 0) // res.Images[0] with its AUTOMATIC1111 parameters
//
// Model.Submit returns a Handle at once: Handle.Progress gives one event
// per denoising step, Handle.Wait the Result, Handle.Cancel (or the Submit
// context) stops the request within one UNet call. A Request with an
// InitImage is image-to-image; Request.OnStep sees every step's latents and
// text embeddings. Errors match ErrClosed, ErrNaN, ErrInvalidRequest (a
// *RequestError, before anything is queued) and the context's errors.
//
// Open reads a folder in the diffusers ONNX layout, as written by
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
// exports all load. Before any weights are loaded, Open checks the folder
// and reports each problem as a *FolderError naming the file: a missing or
// malformed file, a truncated model, a missing external data file, a model
// with the wrong inputs, or components that do not fit together
// (ErrMismatch).
//
// Open's options are of two kinds, typed by what they configure: a
// LoadOption says how the models are loaded (WithDevice, WithThreads,
// WithSessionOptions for ONNX Runtime's own settings, WithRewrites,
// WithWarmup, ...), an EngineOption how the engine runs them (WithMode,
// WithWorkers, WithBatching, WithDefaults). OpenFolder, which loads the
// models without an engine (for programs that drive package pipeline
// themselves), takes LoadOptions only. Options only record values; Open
// validates them all at once.
//
// Library code never prints: pass WithLogger to see what is loaded.
package sd
