package pipeline

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// plan is a request resolved once, at Submit: the job's copy of the
// Request with its defaults filled in, the prompts parsed and tokenized,
// and the schedule, with the first image's generator and scheduler that
// checked it.
type plan struct {
	req    Request
	guided bool // classifier-free guidance on: the UNet gets an unconditional row per image

	// the text encoder's input: uncond chunks (when guided), then cond
	// chunks, each of the same length, with their emphasis weights (nil
	// for none)
	chunks  [][]int32
	chunks2 [][]int32 // the same as Components.Tokenizer2 tokenizes them, or nil
	weights [][]float32
	perText int // chunks per prompt

	first *item     // image 0, before its latents are drawn
	steps []float64 // the model timesteps, shared by the images
}

// resolve validates r and fills its defaults into the plan of its job,
// which the stages then follow: nothing they need is worked out twice.
func (p *Pipeline) resolve(r Request) (*plan, error) {
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
			return nil, invalid(f.name, "%d is not a multiple of 8 in [8, %d]", f.v, MaxSize)
		}
	}
	loras, err := requestLoRAs(&r)
	if err != nil {
		return nil, err
	}
	if err := p.checkLoRAs(loras); err != nil {
		return nil, err
	}
	r.LoRAs = loras
	if r.Steps == 0 {
		r.Steps = DefaultSteps
	}
	if r.Steps < 1 || r.Steps > scheduler.MaxSteps {
		return nil, invalid("Steps", "%d is outside [1, %d]", r.Steps, scheduler.MaxSteps)
	}
	g := p.opts.DefaultGuidance
	if r.GuidanceScale != nil {
		g = *r.GuidanceScale
	}
	if math.IsNaN(g) || math.IsInf(g, 0) || g < 0 || g > MaxGuidance {
		return nil, invalid("GuidanceScale", "%v is not a number in [0, %d]", g, MaxGuidance)
	}
	r.GuidanceScale = &g // the job's own copy
	if math.IsNaN(r.GuidanceRescale) || r.GuidanceRescale < 0 || r.GuidanceRescale > 1 {
		return nil, invalid("GuidanceRescale", "%v is outside [0, 1]", r.GuidanceRescale)
	}
	if math.IsNaN(r.Eta) || r.Eta < 0 || r.Eta > 1 {
		return nil, invalid("Eta", "%v is outside [0, 1]", r.Eta)
	}
	if r.ImagesPerPrompt == 0 {
		r.ImagesPerPrompt = 1
	}
	if r.ImagesPerPrompt < 0 || r.ImagesPerPrompt > MaxImagesPerPrompt {
		return nil, invalid("ImagesPerPrompt", "%d is outside [1, %d]", r.ImagesPerPrompt, MaxImagesPerPrompt)
	}
	if r.Generator == 0 {
		r.Generator = rng.KindNumpy
	}
	if r.Generator != rng.KindNumpy && r.Generator != rng.KindTorchCPU {
		return nil, invalid("Generator", "unknown generator %v", r.Generator)
	}
	if r.BatchNoise != NoisePerImage && r.BatchNoise != NoiseOneGenerator {
		return nil, invalid("BatchNoise", "unknown noise mode %d", r.BatchNoise)
	}
	maxSeed := int64(math.MaxInt64)
	if r.Generator == rng.KindNumpy {
		maxSeed = math.MaxUint32
	}
	if r.Seed == -1 {
		r.Seed = randomSeed(maxSeed - int64(r.ImagesPerPrompt) + 1)
	}
	if r.Seed < 0 || r.Seed > maxSeed-int64(r.ImagesPerPrompt)+1 {
		return nil, invalid("Seed", "%d is outside [0, %d] for %d images with the %v generator (or -1 for random)", r.Seed, maxSeed-int64(r.ImagesPerPrompt)+1, r.ImagesPerPrompt, r.Generator)
	}
	if r.Scheduler == "" {
		r.Scheduler = p.c.Scheduler.ClassName()
	}
	if err := p.resolveMask(&r); err != nil {
		return nil, err
	}
	if r.FastDecode && p.c.FastDecoder == nil {
		return nil, invalid("FastDecode", "this model has no fast decoder (TAESD)")
	}
	if r.InitImage != nil {
		if p.c.VAEEncoder == nil {
			return nil, invalid("InitImage", "this model has no VAE encoder, so img2img is unavailable")
		}
		b := r.InitImage.Bounds()
		if b.Dx() != r.Width || b.Dy() != r.Height {
			return nil, invalid("InitImage", "image is %dx%d, request is %dx%d", b.Dx(), b.Dy(), r.Width, r.Height)
		}
		if r.Strength == 0 {
			r.Strength = DefaultStrength
		}
		if math.IsNaN(r.Strength) || r.Strength <= 0 || r.Strength > 1 {
			return nil, invalid("Strength", "%v is outside (0, 1]", r.Strength)
		}
		if r.Img2ImgLogic != scheduler.Modern && r.Img2ImgLogic != scheduler.LegacyONNX {
			return nil, invalid("Img2ImgLogic", "unknown logic %v", r.Img2ImgLogic)
		}
	} else if r.Strength != 0 {
		return nil, invalid("Strength", "set without an InitImage")
	}
	if r.Latents != nil {
		want := r.ImagesPerPrompt * p.c.LatentChannels * (r.Height / 8) * (r.Width / 8)
		if len(r.Latents) != want {
			return nil, invalid("Latents", "%d values, want %d (%d×%d×%d×%d)", len(r.Latents), want, r.ImagesPerPrompt, p.c.LatentChannels, r.Height/8, r.Width/8)
		}
		for _, v := range r.Latents {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, invalid("Latents", "non-finite value %v", v)
			}
		}
		r.Latents = append([]float32(nil), r.Latents...)
	}
	if err := p.resolveAdded(&r); err != nil {
		return nil, err
	}
	pl := &plan{req: r, guided: g > 1 && p.c.GuidanceEmbedding == 0} // an LCM takes guidance as an embedding
	if err := p.tokenize(pl); err != nil {
		return nil, err
	}
	// the first image's scheduler checks the name, the steps against the
	// training schedule, and the strength; it gives the schedule
	first, err := p.newItem(r, 0, nil)
	if err != nil {
		field := "Scheduler"
		if errors.Is(err, scheduler.ErrOptions) {
			field = "Steps"
		}
		return nil, invalid(field, "%v", err)
	}
	pl.first = first
	pl.steps = slices.Clone(first.sched.Timesteps())
	return pl, nil
}

// tokenize fills pl's chunks: the prompts in AUTOMATIC1111's syntax when
// the tokenizer understands it and the request does not ask for literal
// prompts, else as diffusers tokenizes them.
func (p *Pipeline) tokenize(pl *plan) error {
	r := &pl.req
	pl.perText = 1
	if wt, ok := p.c.Tokenizer.(WeightedTokenizer); ok && !r.LiteralPrompt {
		cond, err := wt.EncodeWeighted(stripLoRAs(r.Prompt))
		if err != nil {
			return invalid("Prompt", "%v", err)
		}
		uncond, err := wt.EncodeWeighted(r.NegativePrompt) // checked even when unused
		if err != nil {
			return invalid("NegativePrompt", "%v", err)
		}
		var texts []*tokenizer.Prompt
		if pl.guided {
			wt.PadChunks(cond, uncond)
			texts = append(texts, uncond)
		}
		for _, t := range append(texts, cond) {
			for _, c := range t.Chunks {
				pl.chunks, pl.weights = append(pl.chunks, c.IDs), append(pl.weights, c.Weights)
			}
		}
		pl.perText = len(cond.Chunks)
	} else {
		if pl.guided {
			pl.chunks = append(pl.chunks, p.c.Tokenizer.Encode(r.NegativePrompt))
		}
		pl.chunks = append(pl.chunks, p.c.Tokenizer.Encode(stripLoRAs(r.Prompt)))
		pl.weights = make([][]float32, len(pl.chunks))
		if t2 := p.c.Tokenizer2; t2 != nil {
			if pl.guided {
				pl.chunks2 = append(pl.chunks2, t2.Encode(r.NegativePrompt))
			}
			pl.chunks2 = append(pl.chunks2, t2.Encode(stripLoRAs(r.Prompt)))
			for _, c := range pl.chunks2 {
				if len(c) != len(pl.chunks[0]) {
					return fmt.Errorf("pipeline: the tokenizers gave sequences of %d and %d ids", len(pl.chunks[0]), len(c))
				}
			}
		}
	}
	for _, c := range pl.chunks {
		if len(c) != len(pl.chunks[0]) {
			return fmt.Errorf("pipeline: tokenizer gave sequences of %d and %d ids", len(pl.chunks[0]), len(c))
		}
	}
	return nil
}

// newItem returns image i of r with its generator and scheduler. With
// NoiseOneGenerator the images after the first share first's generator.
func (p *Pipeline) newItem(r Request, i int, first *item) (*item, error) {
	it := &item{seed: r.Seed + int64(i), latents: make([]float32, p.c.LatentChannels*(r.Height/8)*(r.Width/8))}
	var err error
	if r.BatchNoise == NoiseOneGenerator && first != nil {
		it.seed, it.gen = first.seed, first.gen
	} else if it.gen, err = rng.New(r.Generator, uint64(it.seed)); err != nil {
		return nil, err
	}
	o := scheduler.Options{Steps: r.Steps, Eta: r.Eta, Noise: it.gen, Size: len(it.latents)}
	if r.InitImage != nil && !fromNoise(&r) {
		o.Strength, o.Img2Img = r.Strength, r.Img2ImgLogic
	}
	if it.sched, err = scheduler.New(r.Scheduler, p.c.Scheduler, o); err != nil {
		return nil, err
	}
	return it, nil
}

// randomSeed returns a uniformly random seed in [0, max].
func randomSeed(max int64) int64 {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return int64(binary.LittleEndian.Uint64(b[:]) % uint64(max+1))
}

// resolveAdded fills and checks the size and crop conditioning of a model
// that takes it; for other models the fields must be zero or are ignored.
func (p *Pipeline) resolveAdded(r *Request) error {
	if !p.c.Added {
		return nil
	}
	if r.OriginalWidth == 0 && r.OriginalHeight == 0 {
		r.OriginalWidth, r.OriginalHeight = r.Width, r.Height
	}
	if r.TargetWidth == 0 && r.TargetHeight == 0 {
		r.TargetWidth, r.TargetHeight = r.Width, r.Height
	}
	for _, f := range []struct {
		name string
		v    int
		min  int
	}{
		{"OriginalWidth", r.OriginalWidth, 1}, {"OriginalHeight", r.OriginalHeight, 1},
		{"CropLeft", r.CropLeft, 0}, {"CropTop", r.CropTop, 0},
		{"TargetWidth", r.TargetWidth, 1}, {"TargetHeight", r.TargetHeight, 1},
	} {
		if f.v < f.min || f.v > MaxSize {
			return invalid(f.name, "%d is outside [%d, %d]", f.v, f.min, MaxSize)
		}
	}
	return nil
}

// timeIDs returns SDXL's time ids of r: original size, crop top-left and
// target size, each as height, width, in float32 as diffusers builds them.
func timeIDs(r *Request) []float32 {
	return []float32{
		float32(r.OriginalHeight), float32(r.OriginalWidth),
		float32(r.CropTop), float32(r.CropLeft),
		float32(r.TargetHeight), float32(r.TargetWidth),
	}
}
