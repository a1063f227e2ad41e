package sd

import (
	"fmt"
	"image"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
)

// Request describes one generation: text-to-image, or image-to-image when
// InitImage is set. It is a value: a zero field means the model's default
// (its sdpipe.json, else diffusers' defaults), and the Model resolves those
// into its own copy without modifying the caller's struct. Result.Request
// and Handle.Request give the resolved copy.
type Request struct {
	// Prompt and NegativePrompt use AUTOMATIC1111's syntax: (word) ×1.1,
	// [word] ÷1.1, (word:1.3), BREAK, and prompts beyond 75 tokens in
	// chunks. "" is the unconditional prompt; for an SDXL model whose
	// model_index.json says force_zeros_for_empty_prompt (diffusers'
	// default) an empty NegativePrompt gives all-zero negative embeddings,
	// as in diffusers.
	Prompt         string
	NegativePrompt string
	// LiteralPrompt turns the syntax off: the prompts are tokenized as
	// diffusers does, truncated to one sequence.
	LiteralPrompt bool

	// Width and Height are the image size in pixels, multiples of 8 up to
	// MaxSize; 0 means the model's default size (Model.Defaults).
	Width, Height int
	// Steps is the number of denoising steps; 0 means DefaultSteps.
	Steps int
	// GuidanceScale is the classifier-free guidance scale, up to
	// MaxGuidance; nil means the model's default (Model.Defaults). A scale
	// of 1 or less, 0 included, turns guidance off as in diffusers (no
	// unconditional pass: one UNet row per image, the prompt's prediction
	// alone), which is what few-step models such as SD-Turbo and LCM want:
	//
	//	sd.Request{Prompt: "a cat", GuidanceScale: new(0.0)} // no guidance
	//	sd.Request{Prompt: "a cat", GuidanceScale: new(7.5)}
	GuidanceScale *float64
	// GuidanceRescale is diffusers' guidance_rescale in [0, 1] (0 = off).
	GuidanceRescale float64
	// Scheduler is a diffusers scheduler class or an AUTOMATIC1111 sampler
	// name (see Schedulers), e.g. "EulerAncestralDiscreteScheduler",
	// "Euler a" or "DPM++ 2M Karras"; "" means the model's own
	// (scheduler/scheduler_config.json).
	Scheduler string
	// Eta is DDIM's eta in [0, 1].
	Eta float64

	// Seed seeds the first image; image i uses Seed+i (AUTOMATIC1111's
	// semantics) unless BatchNoise is NoiseOneGenerator. -1 picks a random
	// seed, reported in Result.Seeds.
	Seed int64
	// BatchNoise is how the images of the request get their noise:
	// NoisePerImage (the default, AUTOMATIC1111's: image i is seed Seed+i,
	// so any image can be made again alone) or NoiseOneGenerator
	// (diffusers' and ComfyUI's: one generator seeded with Seed draws the
	// whole batch's noise, so image 2 of a batch matches theirs too).
	BatchNoise NoiseMode
	// Generator is the random number generator the seed drives; 0 means
	// GeneratorNumpy.
	Generator Generator
	// ImagesPerPrompt is the number of images, up to MaxImagesPerPrompt;
	// 0 means 1.
	ImagesPerPrompt int
	// Latents, when set, are the initial noise instead of the seed's:
	// ImagesPerPrompt × channels × Height/8 × Width/8 values, row-major
	// (channels is 4 for Stable Diffusion 1.x and 2.x). The slice is
	// copied.
	Latents []float32

	// InitImage turns the request into image-to-image. It must be Width ×
	// Height (zero sizes take the image's) and needs a model with a VAE
	// encoder.
	InitImage image.Image
	// Strength in (0, 1] is how much of the schedule runs on InitImage
	// (how much the image changes); 0 means DefaultStrength. It must be 0
	// without an InitImage.
	Strength float64
	// Img2ImgLogic selects how Strength truncates the schedule.
	Img2ImgLogic Img2ImgLogic

	// Mask, with an InitImage, inpaints: an image of the InitImage's size
	// read as gray levels, white repainted and black kept, as in
	// AUTOMATIC1111 and diffusers.
	// An inpainting model (a 9-channel UNet) is conditioned on the mask
	// and the masked image as diffusers' inpainting pipelines do; on other
	// models the kept region is blended back from the noised init latents
	// after every step (A1111's masked img2img). With a Mask, Strength 0
	// means 1, which starts from pure noise as diffusers does.
	Mask image.Image
	// Inpaint holds AUTOMATIC1111's options for the Mask: blur, inversion,
	// fill, "only masked". It must be zero without a Mask.
	Inpaint Inpaint

	// OriginalWidth, OriginalHeight, CropLeft, CropTop, TargetWidth and
	// TargetHeight are Stable Diffusion XL's size and crop conditioning
	// (diffusers' original_size, crops_coords_top_left and target_size,
	// the UNet's time_ids); other models ignore them. Zero sizes mean the
	// image's size and the crop's corner defaults to 0, 0, as in diffusers.
	OriginalWidth, OriginalHeight int
	CropLeft, CropTop             int
	TargetWidth, TargetHeight     int

	// Preview asks for a cheap RGB preview of the first image's latents
	// with each progress event (Progress.Preview); with WithTAESD, TAESD's
	// decode of them every few steps.
	Preview bool
	// FastDecode decodes the final images with the TAESD of WithTAESD
	// instead of the VAE: much faster, somewhat less detailed.
	FastDecode bool

	// LoRAs are applied to this request only, besides the prompt's
	// <lora:name:multiplier> tags (AUTOMATIC1111's syntax, removed from the
	// text before it is tokenized). A model whose components cannot apply
	// LoRAs per request refuses them with a *RequestError.
	LoRAs []LoRA

	// OnStep, when set, is called after every denoising step (every UNet
	// call) with read access to the latents and the text embeddings, like
	// diffusers' callback_on_step_end. It runs on the engine's goroutine,
	// so it must be quick and must not block; the engine waits for it.
	OnStep func(Step)
}

// Step is what Request.OnStep sees after one denoising step. The tensors
// are copies made for the call: the callback may keep them.
type Step struct {
	// Step counts the UNet calls made so far (1 after the first); Total is
	// the number of calls the request makes.
	Step, Total int
	// Timestep is the model timestep of this step's call.
	Timestep float64
	// Latents are the latents after the step: [images, channels,
	// Height/8, Width/8] float32.
	Latents *tensor.Dense
	// TextEmbeddings are the text encoder's hidden states the UNet was
	// called with: [rows, sequence, hidden] float32, the negative
	// prompt's row first when guidance is on (diffusers' [uncond, text]
	// order), then the prompt's.
	TextEmbeddings *tensor.Dense
}

// LoRA names a LoRA and the multiplier it is applied with (1 is its full
// effect).
type LoRA struct {
	Name       string
	Multiplier float64
}

// Defaults and limits of a Request.
const (
	DefaultSteps       = 50  // diffusers' num_inference_steps
	DefaultStrength    = 0.8 // diffusers' img2img strength
	MaxSize            = 4096
	MaxImagesPerPrompt = 64
	MaxGuidance        = 100
)

// Generator names the random number generator a seed drives, so that a
// seed gives the same image as the tool that uses that generator.
type Generator int

// The generators a Request accepts.
const (
	// GeneratorNumpy is np.random.RandomState(seed).randn, as diffusers'
	// ONNX pipelines draw their latents (the default).
	GeneratorNumpy Generator = Generator(rng.KindNumpy)
	// GeneratorTorchCPU is torch.randn with a CPU generator, as diffusers'
	// PyTorch pipelines on the CPU and ComfyUI draw them.
	GeneratorTorchCPU Generator = Generator(rng.KindTorchCPU)
)

// String returns "numpy" or "torch-cpu", as image metadata records it.
func (g Generator) String() string {
	switch g {
	case GeneratorNumpy, GeneratorTorchCPU:
		return rng.Kind(g).String()
	}
	return fmt.Sprintf("Generator(%d)", int(g))
}

// ParseGenerator returns the Generator named s: "numpy", or "torch" or
// "torch-cpu" for GeneratorTorchCPU.
func ParseGenerator(s string) (Generator, error) {
	k, err := rng.ParseKind(s)
	if err != nil {
		return 0, fmt.Errorf("sd: generator %q: want numpy, torch or torch-cpu", s)
	}
	return Generator(k), nil
}

// NoiseMode is how the images of one request get their random noise
// (Request.BatchNoise).
type NoiseMode int

// The noise modes a Request accepts.
const (
	// NoisePerImage gives image i its own generator seeded with Seed+i
	// (AUTOMATIC1111), the default.
	NoisePerImage = NoiseMode(pipeline.NoisePerImage)
	// NoiseOneGenerator draws the whole batch's initial noise, then each
	// step's, from one generator seeded with Seed (diffusers, ComfyUI).
	NoiseOneGenerator = NoiseMode(pipeline.NoiseOneGenerator)
)

// Img2ImgLogic selects how an image-to-image Strength truncates the
// schedule: the two diffusers pipelines differ, and both are what users
// see.
type Img2ImgLogic int

// The logics a Request accepts.
const (
	// Img2ImgModern is diffusers' StableDiffusionImg2ImgPipeline (the
	// default).
	Img2ImgModern = Img2ImgLogic(scheduler.Modern)
	// Img2ImgLegacyONNX is diffusers' OnnxStableDiffusionImg2ImgPipeline.
	Img2ImgLegacyONNX = Img2ImgLogic(scheduler.LegacyONNX)
)

// Schedulers returns every name Request.Scheduler accepts: the diffusers
// class names and the AUTOMATIC1111 sampler names, sorted.
func Schedulers() []string { return scheduler.Names() }

// engine returns the engine's form of r.
func (r Request) engine() pipeline.Request {
	p := pipeline.Request{
		Prompt:          r.Prompt,
		NegativePrompt:  r.NegativePrompt,
		LiteralPrompt:   r.LiteralPrompt,
		Width:           r.Width,
		Height:          r.Height,
		Steps:           r.Steps,
		GuidanceScale:   r.GuidanceScale,
		GuidanceRescale: r.GuidanceRescale,
		Scheduler:       r.Scheduler,
		Eta:             r.Eta,
		Seed:            r.Seed,
		Generator:       rng.Kind(r.Generator),
		BatchNoise:      pipeline.NoiseMode(r.BatchNoise),
		ImagesPerPrompt: r.ImagesPerPrompt,
		Latents:         r.Latents,
		InitImage:       r.InitImage,
		Strength:        r.Strength,
		Img2ImgLogic:    scheduler.Img2ImgLogic(r.Img2ImgLogic),
		Mask:            r.Mask,
		Preview:         r.Preview,
		FastDecode:      r.FastDecode,
		OriginalWidth:   r.OriginalWidth,
		OriginalHeight:  r.OriginalHeight,
		CropLeft:        r.CropLeft,
		CropTop:         r.CropTop,
		TargetWidth:     r.TargetWidth,
		TargetHeight:    r.TargetHeight,
	}
	for _, l := range r.LoRAs {
		p.LoRAs = append(p.LoRAs, pipeline.LoRA(l))
	}
	if f := r.OnStep; f != nil {
		p.OnStep = func(s pipeline.Step) { f(Step(s)) }
	}
	return p
}

// resolved returns r with the values the engine resolved in p: the
// defaults it filled in and the seed it picked.
func (r Request) resolved(p pipeline.Request) Request {
	r.Width, r.Height = p.Width, p.Height
	r.Steps = p.Steps
	r.GuidanceScale = p.GuidanceScale // the engine's copy, not the caller's pointer
	r.Scheduler = p.Scheduler
	r.Seed = p.Seed
	r.Generator = Generator(p.Generator)
	r.ImagesPerPrompt = p.ImagesPerPrompt
	r.Latents = p.Latents
	r.Strength = p.Strength
	r.OriginalWidth, r.OriginalHeight = p.OriginalWidth, p.OriginalHeight
	r.TargetWidth, r.TargetHeight = p.TargetWidth, p.TargetHeight
	return r
}
