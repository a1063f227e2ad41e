package server

import (
	"bytes"
	"encoding/base64"
	"image"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/sd"
)

// The APIs a task came through, for /sdapi/v1/progress and the metrics.
const (
	apiA1111     = "a1111"
	apiSageMaker = "sagemaker"
	apiOpenAI    = "openai"
	apiJobs      = "jobs"
	apiSlack     = "slack"
)

// The modes of the fast/quality switch.
const (
	modeFast    = "fast"
	modeQuality = "quality"
	modeCustom  = "custom" // explicit steps
)

// spec is a validated generation: the engine requests it makes.
type spec struct {
	id   string // the client's task id (A1111's force_task_id), or ""
	mode string
	reqs []sd.Request
	a11  *a1111Request // the parsed body, for A1111-shaped responses
	// names are A1111's names of the sampler, for the infotexts;
	// warnings the fields a lenient request ignored; subseed and
	// subseedStrength A1111's variation seed.
	names           samplerChoice
	warnings        []string
	subseed         int64
	subseedStrength float64
	// model is the model the request runs on (the default model when it
	// names none, as the default was when it came).
	model *modelEntry
}

// maxSeed is the largest seed of the default (numpy) generator.
const maxSeed = math.MaxUint32

// common holds the fields every API shares, after mapping its names.
type common struct {
	prompt, negative string
	width, height    int
	steps            int
	quality          string
	guidance         *float64
	sampler          string
	seed             *int64
	perRequest       int // images per engine request
	requests         int // engine requests
	init             image.Image
	mask             image.Image // with init: inpainting, white repainted
	inpaint          sd.Inpaint
	strength         float64
	eta              float64
	latents          func(seed int64, per int) ([]float32, error) // the initial noise, when not the seed's
	baseSeed         int64                                        // the resolved seed, for latents
	subseed          int64
	subseedStrength  float64
	model            *modelEntry       // nil: the default model
	names            map[string]string // our name → the API's field name
}

func (c *common) name(f string) string {
	if n, ok := c.names[f]; ok {
		return n
	}
	return f
}

// build validates c against the server's limits and returns its spec.
func (s *Server) build(c *common) (*spec, error) {
	for _, p := range []struct {
		f, v string
	}{{"prompt", c.prompt}, {"negative_prompt", c.negative}} {
		if len(p.v) > maxPromptBytes {
			return nil, badRequest(c.name(p.f), "%s: %d bytes, more than %d", c.name(p.f), len(p.v), maxPromptBytes)
		}
	}
	for _, p := range []struct {
		f string
		v int
	}{{"width", c.width}, {"height", c.height}} {
		switch {
		case p.v == 0:
		case p.v > s.cfg.MaxSize:
			return nil, badRequest(c.name(p.f), "%s: %d is larger than this server's limit of %d pixels per side (the largest size it serves is %dx%d)", c.name(p.f), p.v, s.cfg.MaxSize, s.cfg.MaxSize, s.cfg.MaxSize)
		case p.v < 8:
			return nil, badRequest(c.name(p.f), "%s: %d is smaller than the smallest side, 8 pixels", c.name(p.f), p.v)
		case p.v%8 != 0:
			return nil, badRequest(c.name(p.f), "%s: %d is not a multiple of 8 (try %d)", c.name(p.f), p.v, max(8, p.v/8*8))
		}
	}
	mode := modeCustom
	switch strings.ToLower(c.quality) {
	case "", "custom":
		if c.steps == 0 {
			mode = modeQuality // the engine's default is 50 steps
		}
	case modeFast, "standard", "low", "medium", "auto":
		mode = modeFast
		if c.steps == 0 {
			c.steps = s.cfg.FastSteps
		}
	case modeQuality, "hd", "high":
		mode = modeQuality
		if c.steps == 0 {
			c.steps = s.cfg.QualitySteps
		}
	default:
		return nil, badRequest(c.name("quality"), "%s: unknown value %q (want fast, standard, low, medium or auto for %d steps; quality, hd or high for %d steps; or custom)", c.name("quality"), c.quality, s.cfg.FastSteps, s.cfg.QualitySteps)
	}
	if c.steps < 0 || c.steps > s.cfg.MaxSteps {
		return nil, badRequest(c.name("steps"), "%s: %d is outside [1, %d]", c.name("steps"), c.steps, s.cfg.MaxSteps)
	}
	if c.sampler != "" && !slices.Contains(s.samplers, c.sampler) {
		return nil, badRequest(c.name("sampler"), "%s: unknown sampler %q (GET /sdapi/v1/samplers lists them)", c.name("sampler"), c.sampler)
	}
	// left out, the model's default; 1 or less, 0 included, no guidance
	// (no unconditional pass), as diffusers' guidance_scale
	var g *float64
	if c.guidance != nil {
		v := *c.guidance
		if math.IsNaN(v) || v < 0 || v > maxGuidance {
			return nil, badRequest(c.name("guidance"), "%s: %v is outside [0, %d]", c.name("guidance"), v, maxGuidance)
		}
		g = &v
	}
	per, n := max(c.perRequest, 1), max(c.requests, 1)
	if _, ok := product(s.cfg.MaxImages, c.perRequest, c.requests); !ok {
		return nil, badRequest(c.name("images"), "%s: %d×%d images, want 1 to %d in all", c.name("images"), c.perRequest, c.requests, s.cfg.MaxImages)
	}
	total := int64(per * n) // at most MaxImages
	seed := int64(-1)
	if c.seed != nil {
		seed = *c.seed
	}
	switch {
	case seed == -1:
		seed = rand.Int64N(maxSeed - total + 2)
	case seed < 0 || seed > maxSeed-total+1:
		return nil, badRequest(c.name("seed"), "%s: %d is outside [0, %d] for %d images (or -1 for random)", c.name("seed"), seed, maxSeed-total+1, total)
	}
	if c.init != nil && (c.strength < 0 || c.strength > 1 || math.IsNaN(c.strength)) {
		return nil, badRequest(c.name("strength"), "%s: %v is outside (0, 1]", c.name("strength"), c.strength)
	}
	c.baseSeed = seed
	sp := &spec{mode: mode, subseed: c.subseed, subseedStrength: c.subseedStrength, model: c.model}
	if sp.model == nil {
		sp.model = s.models.defaultModel()
	}
	sp.names.sampler, sp.names.schedule = a1111Names(c.sampler)
	sp.names.engine = c.sampler
	for k := range n {
		r := sd.Request{
			Prompt: c.prompt, NegativePrompt: c.negative,
			Width: c.width, Height: c.height, Steps: c.steps, GuidanceScale: cloneFloat(g),
			Scheduler: c.sampler, Seed: seed + int64(k*per), ImagesPerPrompt: per, Eta: c.eta,
			// noise as A1111 draws it with its CPU source, so that a seed
			// gives A1111's initial latents; previews for the progress
			// endpoints and streams
			Preview: true,
		}
		sd.UseA1111Noise(&r)
		if c.latents != nil {
			var err error
			if r.Latents, err = c.latents(r.Seed, per); err != nil {
				return nil, err
			}
		}
		if c.init != nil {
			r.InitImage, r.Strength = c.init, c.strength
			if c.mask != nil {
				r.Mask, r.Inpaint = c.mask, c.inpaint
			}
		}
		sp.reqs = append(sp.reqs, r)
	}
	return sp, nil
}

// product returns the product of counts, each 0 meaning 1, and whether
// every count and the product are in [0, limit]. It checks each factor
// before multiplying, so that no product wraps around: 4 ×
// 4611686018427387904 is not 0.
func product(limit int, counts ...int) (int, bool) {
	p := 1
	for _, c := range counts {
		if c < 0 || c > limit {
			return 0, false
		}
		p *= max(c, 1) // both factors are at most limit, which is small
		if p > limit {
			return 0, false
		}
	}
	return p, true
}

// images encodes t's results as base64 PNGs with their infotexts.
func (s *Server) images(t *task) (b64, infotexts []string, seeds []int64, err error) {
	var buf bytes.Buffer
	for _, ii := range s.imageInfos(t) {
		buf.Reset()
		text := ii.infotext()
		if err := encodePNG(&buf, ii.img, text); err != nil {
			return nil, nil, nil, err
		}
		b64 = append(b64, base64.StdEncoding.EncodeToString(buf.Bytes()))
		infotexts = append(infotexts, text)
		seeds = append(seeds, ii.seed)
	}
	return b64, infotexts, seeds, nil
}

// cloneFloat returns a pointer to a copy of *p (nil for nil), so that no
// two requests share one.
func cloneFloat(p *float64) *float64 {
	if p == nil {
		return nil
	}
	return new(*p)
}
