// Package pipeline is sdpipe's engine: a Stable Diffusion text-to-image and
// image-to-image pipeline whose stages run as goroutines linked by
// channels, so that many requests are in flight at once and the text
// encoding, denoising and decoding of different requests overlap.
//
// A request is submitted and its result waited for later, like OpenVINO's
// start_async and wait:
//
//	h, err := p.Submit(ctx, pipeline.Request{Prompt: "a red fox", Steps: 20})
//	...
//	res, err := h.Wait(ctx)
//
// The stages are:
//
//	encode  - tokenizer + CLIP text encoder (and the VAE encoder for img2img)
//	denoise - scheduler + UNet, classifier-free guidance as one batched call;
//	          compatible requests may share one UNet batch (dynamic batching)
//	decode  - VAE decoder, clamping, conversion to image.Image
//
// The pipeline consumes its models through the small interfaces Encoder,
// Denoiser, Decoder and ImageEncoder, so it runs on any implementation
// (the ONNX models of packages textenc, unet and vae, or fakes in tests).
package pipeline
