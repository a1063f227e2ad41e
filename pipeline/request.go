package pipeline

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"math"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/tokenizer"
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

	Width, Height int     // multiples of 8; 0 means DefaultSize
	Steps         int     // 0 means DefaultSteps
	GuidanceScale float64 // 0 means the pipeline's default (Options.DefaultGuidance); <= 1 disables guidance
	// GuidanceRescale is diffusers' guidance_rescale (0 = off).
	GuidanceRescale float64
	// Scheduler is a diffusers class name or an AUTOMATIC1111 sampler name
	// ("Euler a", "DPM++ 2M Karras"); "" means the model's own.
	Scheduler string
	Eta       float64 // DDIM eta

	// Seed seeds the first image; image i uses Seed+i (AUTOMATIC1111's
	// semantics). -1 picks a random seed, reported in the Result.
	Seed int64
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

	// Preview asks for a cheap RGB preview of the latents with each
	// progress event.
	Preview bool

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

// resolve validates r, fills its defaults and returns the job's copy.
func (p *Pipeline) resolve(r Request) (Request, error) {
	if r.InitImage != nil {
		b := r.InitImage.Bounds()
		if r.Width == 0 {
			r.Width = b.Dx()
		}
		if r.Height == 0 {
			r.Height = b.Dy()
		}
	}
	if r.Width == 0 {
		r.Width = p.opts.DefaultWidth
	}
	if r.Height == 0 {
		r.Height = p.opts.DefaultHeight
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"Width", r.Width}, {"Height", r.Height}} {
		if f.v < 8 || f.v > MaxSize || f.v%8 != 0 {
			return r, invalid(f.name, "%d is not a multiple of 8 in [8, %d]", f.v, MaxSize)
		}
	}
	loras, err := requestLoRAs(&r)
	if err != nil {
		return r, err
	}
	if err := p.checkLoRAs(loras); err != nil {
		return r, err
	}
	r.LoRAs = loras
	if _, ok := p.c.Tokenizer.(WeightedTokenizer); ok && !r.LiteralPrompt {
		if _, err := tokenizer.ParseWeighted(stripLoRAs(r.Prompt)); err != nil {
			return r, invalid("Prompt", "%v", err)
		}
		if _, err := tokenizer.ParseWeighted(r.NegativePrompt); err != nil {
			return r, invalid("NegativePrompt", "%v", err)
		}
	}
	if r.Steps == 0 {
		r.Steps = DefaultSteps
	}
	if r.Steps < 1 || r.Steps > scheduler.MaxSteps {
		return r, invalid("Steps", "%d is outside [1, %d]", r.Steps, scheduler.MaxSteps)
	}
	if math.IsNaN(r.GuidanceScale) || math.IsInf(r.GuidanceScale, 0) || r.GuidanceScale < 0 || r.GuidanceScale > MaxGuidance {
		return r, invalid("GuidanceScale", "%v is not a number in [0, %d]", r.GuidanceScale, MaxGuidance)
	}
	if r.GuidanceScale == 0 {
		r.GuidanceScale = p.opts.DefaultGuidance
	}
	if math.IsNaN(r.GuidanceRescale) || r.GuidanceRescale < 0 || r.GuidanceRescale > 1 {
		return r, invalid("GuidanceRescale", "%v is outside [0, 1]", r.GuidanceRescale)
	}
	if math.IsNaN(r.Eta) || r.Eta < 0 || r.Eta > 1 {
		return r, invalid("Eta", "%v is outside [0, 1]", r.Eta)
	}
	if r.ImagesPerPrompt == 0 {
		r.ImagesPerPrompt = 1
	}
	if r.ImagesPerPrompt < 0 || r.ImagesPerPrompt > MaxImagesPerPrompt {
		return r, invalid("ImagesPerPrompt", "%d is outside [1, %d]", r.ImagesPerPrompt, MaxImagesPerPrompt)
	}
	if r.Generator == 0 {
		r.Generator = rng.KindNumpy
	}
	if r.Generator != rng.KindNumpy && r.Generator != rng.KindTorchCPU {
		return r, invalid("Generator", "unknown generator %v", r.Generator)
	}
	maxSeed := int64(math.MaxInt64)
	if r.Generator == rng.KindNumpy {
		maxSeed = math.MaxUint32
	}
	if r.Seed == -1 {
		r.Seed = randomSeed(maxSeed - int64(r.ImagesPerPrompt) + 1)
	}
	if r.Seed < 0 || r.Seed > maxSeed-int64(r.ImagesPerPrompt)+1 {
		return r, invalid("Seed", "%d is outside [0, %d] for %d images with the %v generator (or -1 for random)", r.Seed, maxSeed-int64(r.ImagesPerPrompt)+1, r.ImagesPerPrompt, r.Generator)
	}
	if r.Scheduler == "" {
		r.Scheduler = p.c.Scheduler.ClassName()
	}
	if r.InitImage != nil {
		if p.c.VAEEncoder == nil {
			return r, invalid("InitImage", "this model has no VAE encoder, so img2img is unavailable")
		}
		b := r.InitImage.Bounds()
		if b.Dx() != r.Width || b.Dy() != r.Height {
			return r, invalid("InitImage", "image is %dx%d, request is %dx%d", b.Dx(), b.Dy(), r.Width, r.Height)
		}
		if r.Strength == 0 {
			r.Strength = DefaultStrength
		}
		if math.IsNaN(r.Strength) || r.Strength <= 0 || r.Strength > 1 {
			return r, invalid("Strength", "%v is outside (0, 1]", r.Strength)
		}
		if r.Img2ImgLogic != scheduler.Modern && r.Img2ImgLogic != scheduler.LegacyONNX {
			return r, invalid("Img2ImgLogic", "unknown logic %v", r.Img2ImgLogic)
		}
	} else if r.Strength != 0 {
		return r, invalid("Strength", "set without an InitImage")
	}
	if r.Latents != nil {
		want := r.ImagesPerPrompt * p.c.LatentChannels * (r.Height / 8) * (r.Width / 8)
		if len(r.Latents) != want {
			return r, invalid("Latents", "%d values, want %d (%d×%d×%d×%d)", len(r.Latents), want, r.ImagesPerPrompt, p.c.LatentChannels, r.Height/8, r.Width/8)
		}
		for _, v := range r.Latents {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return r, invalid("Latents", "non-finite value %v", v)
			}
		}
		r.Latents = append([]float32(nil), r.Latents...)
	}
	// A scheduler built now checks the name, the steps against the
	// training schedule, and the strength.
	if _, err := p.newScheduler(r, nil); err != nil {
		field := "Scheduler"
		if errors.Is(err, scheduler.ErrOptions) {
			field = "Steps"
		}
		return r, invalid(field, "%v", err)
	}
	return r, nil
}

func (p *Pipeline) newScheduler(r Request, noise scheduler.Noise) (scheduler.Scheduler, error) {
	o := scheduler.Options{
		Steps: r.Steps,
		Eta:   r.Eta,
		Noise: noise,
		Size:  p.c.LatentChannels * (r.Height / 8) * (r.Width / 8),
	}
	if o.Noise == nil {
		o.Noise = zeroNoise{}
	}
	if r.InitImage != nil {
		o.Strength, o.Img2Img = r.Strength, r.Img2ImgLogic
	}
	return scheduler.New(r.Scheduler, p.c.Scheduler, o)
}

type zeroNoise struct{}

func (zeroNoise) Randn(dst []float32) { clear(dst) }

// randomSeed returns a uniformly random seed in [0, max].
func randomSeed(max int64) int64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return int64(binary.LittleEndian.Uint64(b[:]) % uint64(max+1))
}
