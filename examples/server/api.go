package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/sd"
)

// The APIs a task came through, for /sdapi/v1/progress and the metrics.
const (
	apiA1111     = "a1111"
	apiSageMaker = "sagemaker"
	apiOpenAI    = "openai"
	apiJobs      = "jobs"
)

// The modes of the fast/quality switch.
const (
	modeFast    = "fast"
	modeQuality = "quality"
	modeCustom  = "custom" // explicit steps
)

// spec is a validated generation: the engine requests it makes.
type spec struct {
	mode string
	reqs []sd.Request
	a11  *a1111Request // the parsed body, for A1111-shaped responses
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
	strength         float64
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
		if p.v != 0 && (p.v < 8 || p.v > s.cfg.MaxSize || p.v%8 != 0) {
			return nil, badRequest(c.name(p.f), "%s: %d is not a multiple of 8 in [8, %d]", c.name(p.f), p.v, s.cfg.MaxSize)
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
		return nil, badRequest(c.name("quality"), "%s: unknown value %q (want fast or quality)", c.name("quality"), c.quality)
	}
	if c.steps < 0 || c.steps > s.cfg.MaxSteps {
		return nil, badRequest(c.name("steps"), "%s: %d is outside [1, %d]", c.name("steps"), c.steps, s.cfg.MaxSteps)
	}
	if c.sampler != "" && !slices.Contains(s.samplers, c.sampler) {
		return nil, badRequest(c.name("sampler"), "%s: unknown sampler %q (GET /sdapi/v1/samplers lists them)", c.name("sampler"), c.sampler)
	}
	var g float64
	if c.guidance != nil {
		g = *c.guidance
		if math.IsNaN(g) || g < 0 || g > pipeline.MaxGuidance {
			return nil, badRequest(c.name("guidance"), "%s: %v is outside [0, %d]", c.name("guidance"), g, pipeline.MaxGuidance)
		}
		if g == 0 {
			g = 1 // an explicit 0 disables guidance, as <= 1 does
		}
	}
	per, n := max(c.perRequest, 1), max(c.requests, 1)
	if c.perRequest < 0 || c.requests < 0 || per*n > s.cfg.MaxImages {
		return nil, badRequest(c.name("images"), "%s: %d×%d images, want 1 to %d in all", c.name("images"), c.perRequest, c.requests, s.cfg.MaxImages)
	}
	total := int64(per * n)
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
	sp := &spec{mode: mode}
	for k := range n {
		r := sd.Request{
			Prompt: c.prompt, NegativePrompt: c.negative,
			Width: c.width, Height: c.height, Steps: c.steps, GuidanceScale: g,
			Scheduler: c.sampler, Seed: seed + int64(k*per), ImagesPerPrompt: per,
		}
		if c.init != nil {
			r.InitImage, r.Strength = c.init, c.strength
		}
		sp.reqs = append(sp.reqs, r)
	}
	return sp, nil
}

// runImages runs sp to the end and returns its images as base64 PNGs.
func (s *Server) runImages(r *http.Request, api string, sp *spec) ([]string, error) {
	t, err := s.runSync(r, api, sp)
	if err != nil {
		return nil, err
	}
	b64, _, _, err := s.images(t.results)
	return b64, err
}

// images encodes the results as base64 PNGs with their infotexts.
func (s *Server) images(results []*sd.Result) (b64, infotexts []string, seeds []int64, err error) {
	var buf bytes.Buffer
	for _, res := range results {
		for i, img := range res.Images {
			buf.Reset()
			if err := pipeline.EncodePNG(&buf, img, res.Infotexts[i]); err != nil {
				return nil, nil, nil, err
			}
			b64 = append(b64, base64.StdEncoding.EncodeToString(buf.Bytes()))
			infotexts = append(infotexts, res.Infotexts[i])
			seeds = append(seeds, res.Seeds[i])
		}
	}
	s.met.served(len(b64))
	return b64, infotexts, seeds, nil
}

// ---- AUTOMATIC1111

// a1111Request is the subset of AUTOMATIC1111's txt2img and img2img bodies
// the service reads; other fields are ignored, as clients send many.
type a1111Request struct {
	Prompt            string   `json:"prompt"`
	NegativePrompt    string   `json:"negative_prompt"`
	Seed              *int64   `json:"seed,omitempty"`
	SamplerName       string   `json:"sampler_name"`
	Steps             int      `json:"steps"`
	CFGScale          *float64 `json:"cfg_scale,omitempty"`
	Width             int      `json:"width"`
	Height            int      `json:"height"`
	BatchSize         int      `json:"batch_size"`
	NIter             int      `json:"n_iter"`
	DenoisingStrength float64  `json:"denoising_strength,omitempty"`
	InitImages        []string `json:"init_images,omitempty"`
	// Quality is this service's fast/quality switch ("fast" or
	// "quality"), used when Steps is 0.
	Quality string `json:"quality,omitempty"`
}

func (s *Server) a1111Spec(in *a1111Request, img2img bool) (*spec, error) {
	c := &common{
		prompt: in.Prompt, negative: in.NegativePrompt, width: in.Width, height: in.Height,
		steps: in.Steps, quality: in.Quality, guidance: in.CFGScale, sampler: in.SamplerName,
		seed: in.Seed, perRequest: in.BatchSize, requests: in.NIter, strength: in.DenoisingStrength,
		names: map[string]string{"guidance": "cfg_scale", "sampler": "sampler_name", "images": "batch_size×n_iter", "strength": "denoising_strength"},
	}
	if img2img {
		if len(in.InitImages) != 1 {
			return nil, badRequest("init_images", "init_images: want exactly one base64 image, got %d", len(in.InitImages))
		}
		img, err := s.decodeImage("init_images", in.InitImages[0], in.Width, in.Height)
		if err != nil {
			return nil, err
		}
		c.init = img
		c.width, c.height = img.Bounds().Dx(), img.Bounds().Dy()
		if c.strength == 0 {
			c.strength = 0.75 // AUTOMATIC1111's default
		}
	} else if len(in.InitImages) > 0 {
		return nil, badRequest("init_images", "init_images: use /sdapi/v1/img2img")
	}
	sp, err := s.build(c)
	if err != nil {
		return nil, err
	}
	sp.a11 = in
	return sp, nil
}

type a1111Response struct {
	Images     []string      `json:"images"`
	Parameters *a1111Request `json:"parameters"`
	Info       string        `json:"info"`
}

func (s *Server) a1111Result(t *task) (*a1111Response, error) {
	b64, infotexts, seeds, err := s.images(t.results)
	if err != nil {
		return nil, err
	}
	in := t.spec.a11
	r := t.results[0].Request
	n := len(b64)
	info := map[string]any{
		"prompt":               in.Prompt,
		"all_prompts":          slices.Repeat([]string{in.Prompt}, n),
		"negative_prompt":      in.NegativePrompt,
		"all_negative_prompts": slices.Repeat([]string{in.NegativePrompt}, n),
		"seed":                 seeds[0],
		"all_seeds":            seeds,
		"subseed":              -1,
		"all_subseeds":         slices.Repeat([]int64{-1}, n),
		"width":                r.Width,
		"height":               r.Height,
		"sampler_name":         r.Scheduler,
		"cfg_scale":            r.GuidanceScale,
		"steps":                r.Steps,
		"batch_size":           r.ImagesPerPrompt,
		"n_iter":               len(t.results),
		"infotexts":            infotexts,
		"sd_model_name":        s.cfg.ModelName,
		"job_timestamp":        t.created.UTC().Format("20060102150405"),
		"quality":              t.mode,
	}
	if r.InitImage != nil {
		info["denoising_strength"] = r.Strength
	}
	b, err := json.Marshal(info)
	if err != nil {
		return nil, err
	}
	// echo the parameters without the (large) init images
	p := *in
	p.InitImages = nil
	return &a1111Response{Images: b64, Parameters: &p, Info: string(b)}, nil
}

func (s *Server) handleA1111(img2img bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in a1111Request
		if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
			writeError(w, err)
			return
		}
		sp, err := s.a1111Spec(&in, img2img)
		if err != nil {
			writeError(w, err)
			return
		}
		t, err := s.runSync(r, apiA1111, sp)
		if err != nil {
			writeError(w, err)
			return
		}
		out, err := s.a1111Result(t)
		if err != nil {
			writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
	}
}

// ---- SageMaker

// promptList is a prompt given as a string or a list of strings; it keeps
// the raw JSON to echo it back.
type promptList struct {
	list []string
	raw  json.RawMessage
}

func (p *promptList) UnmarshalJSON(b []byte) error {
	p.raw = append(json.RawMessage(nil), b...)
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		p.list = []string{one}
		return nil
	}
	if err := json.Unmarshal(b, &p.list); err != nil {
		return badRequest("prompt", "prompt: want a string or a list of strings")
	}
	return nil
}

type sageMakerRequest struct {
	Prompt             promptList `json:"prompt"`
	Width              int        `json:"width"`
	Height             int        `json:"height"`
	NumInferenceSteps  int        `json:"num_inference_steps"`
	GuidanceScale      *float64   `json:"guidance_scale"`
	NegativePrompt     string     `json:"negative_prompt"`
	NumImagesPerPrompt int        `json:"num_images_per_prompt"`
	Seed               *int64     `json:"seed"`
	Scheduler          string     `json:"scheduler"`
	Quality            string     `json:"quality"`
}

func (s *Server) handleSageMaker(w http.ResponseWriter, r *http.Request) {
	var in sageMakerRequest
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		writeError(w, err)
		return
	}
	if len(in.Prompt.list) == 0 {
		writeError(w, badRequest("prompt", "prompt is required"))
		return
	}
	per := max(in.NumImagesPerPrompt, 1)
	if in.NumImagesPerPrompt < 0 || per*len(in.Prompt.list) > s.cfg.MaxImages {
		writeError(w, badRequest("num_images_per_prompt", "num_images_per_prompt: %d prompts × %d images, want 1 to %d in all", len(in.Prompt.list), in.NumImagesPerPrompt, s.cfg.MaxImages))
		return
	}
	names := map[string]string{"steps": "num_inference_steps", "guidance": "guidance_scale", "sampler": "scheduler", "images": "num_images_per_prompt"}
	sp := &spec{}
	for k, p := range in.Prompt.list {
		var seed *int64
		if in.Seed != nil {
			v := *in.Seed + int64(k*per)
			if *in.Seed == -1 {
				v = -1
			}
			seed = &v
		}
		one, err := s.build(&common{
			prompt: p, negative: in.NegativePrompt, width: in.Width, height: in.Height,
			steps: in.NumInferenceSteps, quality: in.Quality, guidance: in.GuidanceScale, sampler: in.Scheduler,
			seed: seed, perRequest: in.NumImagesPerPrompt, names: names,
		})
		if err != nil {
			writeError(w, err)
			return
		}
		sp.mode = one.mode
		sp.reqs = append(sp.reqs, one.reqs...)
	}
	b64, err := s.runImages(r, apiSageMaker, sp)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"generated_images": b64, "prompt": in.Prompt.raw})
}

// ---- OpenAI

type openAIRequest struct {
	Prompt         string `json:"prompt"`
	N              int    `json:"n"`
	Size           string `json:"size"`
	ResponseFormat string `json:"response_format"`
	Quality        string `json:"quality"`
	Model          string `json:"model"`
	NegativePrompt string `json:"negative_prompt"` // an extension
	Seed           *int64 `json:"seed"`            // an extension
}

func (s *Server) handleOpenAI(w http.ResponseWriter, r *http.Request) {
	var in openAIRequest
	if err := decodeJSON(w, r, s.cfg.MaxBodyBytes, &in); err != nil {
		writeError(w, err)
		return
	}
	if in.Prompt == "" {
		writeError(w, badRequest("prompt", "prompt is required"))
		return
	}
	if f := in.ResponseFormat; f != "" && f != "b64_json" {
		writeError(w, badRequest("response_format", "response_format: only b64_json is supported, not %q", f))
		return
	}
	var width, height int
	if in.Size != "" && in.Size != "auto" {
		var ok bool
		if width, height, ok = parseSize(in.Size); !ok {
			writeError(w, badRequest("size", `size: %q is not "WIDTHxHEIGHT"`, in.Size))
			return
		}
	}
	if in.N < 0 {
		writeError(w, badRequest("n", "n: %d is negative", in.N))
		return
	}
	quality := in.Quality
	if quality == "" {
		quality = modeFast
	}
	sp, err := s.build(&common{
		prompt: in.Prompt, negative: in.NegativePrompt, width: width, height: height,
		quality: quality, seed: in.Seed, perRequest: in.N,
		names: map[string]string{"width": "size", "height": "size", "images": "n"},
	})
	if err != nil {
		writeError(w, err)
		return
	}
	b64, err := s.runImages(r, apiOpenAI, sp)
	if err != nil {
		writeError(w, err)
		return
	}
	type datum struct {
		B64JSON       string `json:"b64_json"`
		RevisedPrompt string `json:"revised_prompt"`
	}
	data := make([]datum, len(b64))
	for i, b := range b64 {
		data[i] = datum{B64JSON: b, RevisedPrompt: in.Prompt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"created": time.Now().Unix(), "data": data})
}

// errNotFound is a 404 for unknown jobs.
var errNotFound = errors.New("server: no such job")

func notFound(id string) error {
	return &apiError{Status: http.StatusNotFound, Type: "not_found", Param: "id", Msg: fmt.Sprintf("%v %q (finished jobs expire)", errNotFound, id)}
}
