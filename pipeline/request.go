package pipeline

import (
	"errors"
	"fmt"
	"image"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
)

// Defaults for the zero fields of a Request.
const (
	DefaultSize     = 512
	DefaultSteps    = 50
	DefaultGuidance = 7.5
	DefaultStrength = 0.8
)

// Limits on a Request.
const (
	MaxSize            = 4096
	MaxImagesPerPrompt = 64
	MaxGuidance        = 100
)

// Request describes one generation. It is a value: the pipeline resolves its
// zero fields into its own copy and never modifies the caller's.
type Request struct {
	// Prompt and NegativePrompt use AUTOMATIC1111's syntax when the
	// tokenizer supports it: (word) ×1.1, [word] ÷1.1, (word:1.3), BREAK,
	// and prompts beyond 75 tokens in chunks. "" is the unconditional
	// prompt.
	Prompt         string
	NegativePrompt string
	// LiteralPrompt turns the syntax off: the prompts are tokenized as
	// diffusers does, truncated to one sequence.
	LiteralPrompt bool

	Width, Height int // multiples of 8; 0 means DefaultSize
	Steps         int // 0 means DefaultSteps
	// GuidanceScale is the classifier-free guidance scale; nil means the
	// pipeline's default (Options.DefaultGuidance). A scale of 1 or less,
	// 0 included, turns guidance off as diffusers' do_classifier_free_guidance
	// does: no unconditional row, one UNet row per image, the prediction
	// is the prompt's alone.
	GuidanceScale *float64
	// GuidanceRescale is diffusers' guidance_rescale (0 = off).
	GuidanceRescale float64
	// Scheduler is a diffusers class name or an AUTOMATIC1111 sampler name
	// ("Euler a", "DPM++ 2M Karras"); "" means the model's own.
	Scheduler string
	Eta       float64 // DDIM eta

	// Seed seeds the first image; image i uses Seed+i (AUTOMATIC1111's
	// semantics) unless BatchNoise is NoiseOneGenerator. -1 picks a random
	// seed, reported in the Result.
	Seed int64
	// BatchNoise chooses how the images of one request get their noise:
	// NoisePerImage (the default: image i has its own generator seeded
	// with Seed+i, as AUTOMATIC1111) or NoiseOneGenerator (one generator
	// seeded with Seed draws the whole batch's initial noise at once and
	// then each step's noise in image order, as diffusers and ComfyUI do,
	// so that every image of a batch matches theirs).
	BatchNoise NoiseMode
	// Generator selects the random number generator for the seed:
	// rng.KindNumpy (the default, also meant by 0: diffusers' ONNX pipelines) or
	// rng.KindTorchCPU (diffusers' PyTorch pipelines on CPU, ComfyUI).
	Generator rng.Kind
	// ImagesPerPrompt is the number of images; 0 means 1.
	ImagesPerPrompt int
	// Latents, when set, are the initial noise (ImagesPerPrompt ×
	// channels × Height/8 × Width/8 values) instead of the seed's.
	Latents []float32

	// InitImage turns the request into img2img; it must be Width × Height
	// (0 sizes take the image's). Strength in (0, 1] (0 means
	// DefaultStrength) sets how much of the schedule runs.
	InitImage image.Image
	Strength  float64
	// Img2ImgLogic picks the timestep logic: scheduler.Modern (diffusers'
	// StableDiffusionImg2ImgPipeline, the default) or scheduler.LegacyONNX
	// (OnnxStableDiffusionImg2ImgPipeline).
	Img2ImgLogic scheduler.Img2ImgLogic

	// Mask, with an InitImage, inpaints: a Width × Height image read as
	// gray levels, white (≥ 50 %) repainted and black kept (diffusers'
	// mask_image). An inpainting UNet (Components.UNetInChannels 9) takes
	// the mask and the masked image's latents as diffusers' inpainting
	// pipelines give them; with a 4-channel UNet the kept region is blended
	// back from the noised init latents after every step (diffusers'
	// StableDiffusionInpaintPipeline on a 4-channel UNet, A1111's masked
	// img2img). With a Mask, Strength 0 means 1, and Strength 1 starts from
	// pure noise as diffusers does.
	Mask image.Image
	// MaskFill is what the latents under the mask start from (A1111's
	// inpainting_fill 1, 2 and 3); it needs a Mask.
	MaskFill MaskFill

	// OriginalWidth, OriginalHeight, CropLeft, CropTop, TargetWidth and
	// TargetHeight are Stable Diffusion XL's size and crop conditioning
	// (diffusers' original_size, crops_coords_top_left, target_size), for
	// models that take it (Components.Added); models without it ignore
	// them. Zero sizes mean the image's size, as diffusers defaults them.
	OriginalWidth, OriginalHeight int
	CropLeft, CropTop             int
	TargetWidth, TargetHeight     int

	// Preview asks for a cheap RGB preview of the latents with each
	// progress event (from Components.PreviewDecoder when there is one).
	Preview bool
	// FastDecode decodes the final images with Components.FastDecoder
	// (TAESD) instead of the VAE decoder.
	FastDecode bool

	// LoRAs are applied to this request only, with the prompt's
	// <lora:name:multiplier> tags (AUTOMATIC1111's syntax, removed from
	// the text before tokenizing); the model's components must implement
	// LoRADenoiser and LoRAEncoder.
	LoRAs []LoRA

	// OnStep, when set, is called after each denoising step (each UNet
	// call) from the denoise stage's goroutine, which waits for it. A
	// panic in it fails this request alone.
	OnStep func(Step)
}

// Step is what Request.OnStep sees after one denoising step. The tensors
// are copies made for the call.
type Step struct {
	Step, Total    int           // UNet calls made, and in all
	Timestep       float64       // the model timestep of the call
	Latents        *tensor.Dense // [images, channels, h, w] after the step
	TextEmbeddings *tensor.Dense // [rows, sequence, hidden]: uncond (when guided), then cond
}

// RequestError reports an invalid Request field. It is returned by Submit
// before anything is queued.
type RequestError struct {
	Field  string
	Reason string
}

func (e *RequestError) Error() string {
	return fmt.Sprintf("pipeline: invalid request: %s: %s", e.Field, e.Reason)
}

// ErrInvalidRequest is wrapped by every RequestError.
var ErrInvalidRequest = errors.New("pipeline: invalid request")

// Is makes errors.Is(err, ErrInvalidRequest) true for a RequestError.
func (e *RequestError) Is(target error) bool { return target == ErrInvalidRequest }

func invalid(field, format string, args ...any) error {
	return &RequestError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// detached returns r with its own copy of what a pointer field points to,
// so that a caller writing through it cannot change the job.
func (r Request) detached() Request {
	if g := r.GuidanceScale; g != nil {
		r.GuidanceScale = new(*g)
	}
	return r
}

// NoiseMode is how the images of a request get their random noise.
type NoiseMode int

// Noise modes (Request.BatchNoise).
const (
	NoisePerImage     NoiseMode = iota // image i: its own generator, seed Seed+i (AUTOMATIC1111)
	NoiseOneGenerator                  // one generator for the batch (diffusers, ComfyUI)
)
