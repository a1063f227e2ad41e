package server

import (
	"bytes"
	"encoding/base64"
	"image"
	"image/png"

	"encoding/json"
	"errors"
	"fmt"
	"github.com/sdpipe/sdpipe/sd"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"
)

// ---- AUTOMATIC1111

// a1111Request is AUTOMATIC1111's txt2img and img2img body as the service
// reads it. Every other field A1111 has is checked against what the
// service does (see a1111_fields.go).
type a1111Request struct {
	Prompt            string   `json:"prompt"`
	NegativePrompt    string   `json:"negative_prompt"`
	Seed              *int64   `json:"seed,omitempty"`
	Subseed           *int64   `json:"subseed,omitempty"`
	SubseedStrength   float64  `json:"subseed_strength,omitempty"`
	SamplerName       string   `json:"sampler_name"`
	SamplerIndex      string   `json:"sampler_index,omitempty"` // A1111's fallback for sampler_name
	Scheduler         string   `json:"scheduler,omitempty"`     // A1111 ≥ 1.9's schedule type
	Steps             int      `json:"steps"`
	CFGScale          *float64 `json:"cfg_scale,omitempty"`
	Width             int      `json:"width"`
	Height            int      `json:"height"`
	BatchSize         int      `json:"batch_size"`
	NIter             int      `json:"n_iter"`
	Eta               *float64 `json:"eta,omitempty"`
	DenoisingStrength float64  `json:"denoising_strength,omitempty"`
	InitImages        []string `json:"init_images,omitempty"`
	Mask              string   `json:"mask,omitempty"`
	SendImages        *bool    `json:"send_images,omitempty"`
	EnableHR          bool     `json:"enable_hr,omitempty"`
	RefinerCheckpoint string   `json:"refiner_checkpoint,omitempty"`
	a1111Mask
	// OverrideSettings are A1111 settings for this request only:
	// sd_model_checkpoint and CLIP_stop_at_last_layers (clip skip) among
	// them.
	OverrideSettings map[string]json.RawMessage `json:"override_settings,omitempty"`
	// Quality is this service's fast/quality switch ("fast" or
	// "quality"), used when Steps is 0.
	Quality string `json:"quality,omitempty"`
	// ForceTaskID names the task, as AUTOMATIC1111's UI does, so that
	// /sdapi/v1/interrupt and /sdapi/v1/progress can name it (id_task).
	ForceTaskID string `json:"force_task_id,omitempty"`

	raw map[string]json.RawMessage // every field as sent, for a1111Problems
}

// UnmarshalJSON decodes the body and keeps its fields, to check them.
func (a *a1111Request) UnmarshalJSON(b []byte) error {
	type plain a1111Request
	if err := json.Unmarshal(b, (*plain)(a)); err != nil {
		return err
	}
	if err := json.Unmarshal(b, &a.raw); err != nil {
		return err
	}
	delete(a.raw, "init_images") // held above; the raw copy would double it
	delete(a.raw, "mask")
	a.raw["init_images"], a.raw["mask"] = nil, nil
	return nil
}

// validTaskID reports whether id can name a task: 1 to 64 of the
// characters AUTOMATIC1111's "task(…)" ids use.
func validTaskID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_.()", c)) {
			return false
		}
	}
	return true
}

func (s *Server) a1111Spec(r *http.Request, in *a1111Request, img2img bool) (*spec, error) {
	warnings, err := s.checkA1111Fields(r, in, img2img)
	if err != nil {
		return nil, err
	}
	field, name := "sampler_name", in.SamplerName
	if name == "" && in.SamplerIndex != "" {
		field, name = "sampler_index", in.SamplerIndex // A1111's fallback
	}
	choice, err := resolveSampler(field, name, in.Scheduler)
	if err != nil {
		return nil, err
	}
	model, err := s.checkOverrides(in.OverrideSettings)
	if err != nil {
		return nil, err
	}
	eta, err := a1111Eta(in, choice)
	if err != nil {
		return nil, err
	}
	c := &common{
		prompt: in.Prompt, negative: in.NegativePrompt, width: in.Width, height: in.Height,
		steps: in.Steps, quality: in.Quality, guidance: in.CFGScale, sampler: choice.engine,
		seed: in.Seed, perRequest: in.BatchSize, requests: in.NIter, strength: in.DenoisingStrength,
		eta: eta, model: model,
		names: map[string]string{"guidance": "cfg_scale", "sampler": field, "images": "batch_size×n_iter", "strength": "denoising_strength"},
	}
	if img2img {
		if len(in.InitImages) != 1 {
			return nil, badRequest("init_images", "init_images: want exactly one base64 image, got %d", len(in.InitImages))
		}
		var o sd.Inpaint
		if in.Mask != "" {
			if o, err = a1111Inpaint(in); err != nil {
				return nil, err
			}
		}
		w, h := in.Width, in.Height
		if o.OnlyMasked { // the image keeps its size; width × height is the crop's
			w, h = 0, 0
		}
		img, err := s.decodeImage("init_images", in.InitImages[0], w, h)
		if err != nil {
			return nil, err
		}
		c.init = img
		in.InitImages = nil // the decoded image is what the task keeps
		c.width, c.height = img.Bounds().Dx(), img.Bounds().Dy()
		if o.OnlyMasked && in.Width != 0 && in.Height != 0 {
			c.width, c.height = in.Width, in.Height
		}
		if c.strength == 0 {
			c.strength = 0.75 // AUTOMATIC1111's default
		}
		if in.Mask != "" {
			m, err := s.decodeImage("mask", in.Mask, img.Bounds().Dx(), img.Bounds().Dy())
			if err != nil {
				return nil, err
			}
			c.mask, c.inpaint = maskOf(m, false), o
			in.Mask = ""
		}
	} else if len(in.InitImages) > 0 {
		return nil, badRequest("init_images", "init_images: use /sdapi/v1/img2img")
	} else if in.Mask != "" {
		return nil, badRequest("mask", "mask: use /sdapi/v1/img2img with init_images")
	}
	if in.ForceTaskID != "" && !validTaskID(in.ForceTaskID) {
		return nil, badRequest("force_task_id", "force_task_id: want 1 to 64 letters, digits or -_.()")
	}
	if err := s.variation(c, in); err != nil {
		return nil, err
	}
	sp, err := s.build(c)
	if err != nil {
		return nil, err
	}
	sp.a11, sp.id = in, in.ForceTaskID
	sp.warnings = warnings
	return sp, nil
}

// a1111Eta returns the DDIM eta of in: eta, else override_settings'
// eta_ddim, for DDIM; other samplers take A1111's defaults only.
func a1111Eta(in *a1111Request, c samplerChoice) (float64, error) {
	v := in.Eta
	if v == nil {
		if raw, ok := in.OverrideSettings["eta_ddim"]; ok && !isNull(raw) {
			var f float64
			if err := json.Unmarshal(raw, &f); err != nil {
				return 0, badRequest("override_settings.eta_ddim", "override_settings.eta_ddim: want a number")
			}
			if c.sampler == "DDIM" {
				v = &f
			}
		}
	}
	if v == nil {
		return 0, nil
	}
	switch s, _, _ := findSampler(c.sampler); {
	case c.sampler == "DDIM":
		if *v < 0 || *v > 1 || math.IsNaN(*v) {
			return 0, badRequest("eta", "eta: %v is outside [0, 1]", *v)
		}
		return *v, nil
	case s.options["uses_ensd"] == true && *v != 1:
		return 0, badRequest("eta", "eta: %s runs with eta 1 here (A1111's default for ancestral samplers); other values are not supported", c.sampler)
	}
	return 0, nil // eta does nothing to the other samplers, in A1111 too
}

// checkOverrides checks the override_settings the service honours: the
// model (one the server has, for this request only, as in A1111: the
// default stays) and clip skip. It returns the model, nil for the default.
func (s *Server) checkOverrides(o map[string]json.RawMessage) (*modelEntry, error) {
	var model *modelEntry
	if raw, ok := o["sd_model_checkpoint"]; ok && !isNull(raw) {
		var name string
		if err := json.Unmarshal(raw, &name); err != nil {
			return nil, badRequest("override_settings.sd_model_checkpoint", "override_settings.sd_model_checkpoint: want a string")
		}
		var err error
		if model, err = s.models.find("override_settings.sd_model_checkpoint", name); err != nil {
			return nil, err
		}
	}
	if raw, ok := o["CLIP_stop_at_last_layers"]; ok && !isNull(raw) {
		var n int
		if err := json.Unmarshal(raw, &n); err != nil {
			return nil, badRequest("override_settings.CLIP_stop_at_last_layers", "override_settings.CLIP_stop_at_last_layers: want an integer")
		}
		if n > 1 {
			return nil, errNoClipSkip("override_settings.CLIP_stop_at_last_layers", n)
		}
	}
	return model, nil
}

// errNoClipSkip refuses a clip skip the engine cannot do.
func errNoClipSkip(param string, n int) error {
	return &apiError{Status: http.StatusBadRequest, Type: "invalid_request_error", Param: param,
		Msg: fmt.Sprintf("%s: clip skip %d is not supported: the engine uses the text encoder's last hidden state (its ONNX export has no earlier layers' states); send 1", param, n)}
}

// a1111Parameters is the "parameters" A1111 echoes: the request as it
// ran, every field filled with what was used rather than left at zero.
func (s *Server) a1111Parameters(t *task, seeds []int64) map[string]any {
	in := t.spec.a11
	r := t.results[0].Request
	p := map[string]any{}
	for k, v := range in.raw {
		if !isNull(v) {
			p[k] = v
		}
	}
	delete(p, "init_images")
	delete(p, "mask")
	seed := any(nil)
	if in.Seed != nil {
		seed = *in.Seed
	}
	if seed == nil || seed == int64(-1) {
		seed = seeds[0]
	}
	p["prompt"], p["negative_prompt"] = in.Prompt, in.NegativePrompt
	p["seed"] = seed
	p["subseed"], p["subseed_strength"] = t.spec.subseed, t.spec.subseedStrength
	p["sampler_name"], p["scheduler"] = s.samplerNames(t)
	p["steps"], p["cfg_scale"] = r.Steps, r.GuidanceScale
	p["width"], p["height"] = r.Width, r.Height
	p["batch_size"], p["n_iter"] = r.ImagesPerPrompt, len(t.results)
	p["send_images"] = in.SendImages == nil || *in.SendImages
	p["save_images"] = false
	if r.InitImage != nil {
		p["denoising_strength"] = r.Strength
	}
	if in.Quality != "" {
		p["quality"] = t.mode
	}
	if in.ForceTaskID != "" {
		p["force_task_id"] = in.ForceTaskID
	}
	return p
}

type a1111Response struct {
	Images     []string       `json:"images"`
	Parameters map[string]any `json:"parameters"`
	Info       string         `json:"info"`
}

// a1111Result is t's response, with the number of images in it.
func (s *Server) a1111Result(t *task) (*a1111Response, int, error) {
	b64, infotexts, seeds, err := s.images(t)
	if err != nil {
		return nil, 0, err
	}
	r := t.results[0].Request
	n := len(b64)
	sampler, schedule := s.samplerNames(t)
	model, _ := t.runOn()
	if model == nil {
		model = s.models.defaultModel()
	}
	all := func(v any) []any { return slices.Repeat([]any{v}, n) }
	subseeds := make([]int64, n)
	for i := range subseeds {
		subseeds[i] = t.spec.subseed + int64(i)
	}
	info := map[string]any{
		"prompt":                           r.Prompt,
		"all_prompts":                      all(r.Prompt),
		"negative_prompt":                  r.NegativePrompt,
		"all_negative_prompts":             all(r.NegativePrompt),
		"seed":                             seeds[0],
		"all_seeds":                        seeds,
		"subseed":                          t.spec.subseed,
		"all_subseeds":                     subseeds,
		"subseed_strength":                 t.spec.subseedStrength,
		"width":                            r.Width,
		"height":                           r.Height,
		"sampler_name":                     sampler,
		"cfg_scale":                        r.GuidanceScale,
		"steps":                            r.Steps,
		"batch_size":                       r.ImagesPerPrompt,
		"restore_faces":                    false,
		"face_restoration_model":           nil,
		"sd_model_name":                    model.name,
		"sd_model_hash":                    model.shortHash(),
		"sd_vae_name":                      nil,
		"sd_vae_hash":                      nil,
		"seed_resize_from_w":               -1,
		"seed_resize_from_h":               -1,
		"denoising_strength":               nil,
		"extra_generation_params":          map[string]any{"Schedule type": schedule},
		"index_of_first_image":             0,
		"infotexts":                        infotexts,
		"styles":                           []string{},
		"job_timestamp":                    t.created.UTC().Format("20060102150405"),
		"clip_skip":                        1,
		"is_using_inpainting_conditioning": false,
		"version":                          version(),
		"n_iter":                           len(t.results),
		"quality":                          t.mode,
	}
	if r.InitImage != nil {
		info["denoising_strength"] = r.Strength
	}
	if len(t.spec.warnings) > 0 {
		info["warnings"] = t.spec.warnings
	}
	if t.interrupted {
		info["interrupted"] = true
	}
	b, err := json.Marshal(info)
	if err != nil {
		return nil, 0, err
	}
	if in := t.spec.a11; in.SendImages != nil && !*in.SendImages {
		b64 = []string{}
	}
	return &a1111Response{Images: b64, Parameters: s.a1111Parameters(t, seeds), Info: string(b)}, n, nil
}

func (s *Server) handleA1111(img2img bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in a1111Request
		release, err := s.decode(w, r, &in)
		if err != nil {
			s.writeError(w, err)
			return
		}
		sp, err := s.a1111Spec(r, &in, img2img)
		release()
		if err != nil {
			s.writeError(w, err)
			return
		}
		t, err := s.runSync(r, apiA1111, sp)
		if err != nil && !(errors.Is(err, errInterrupted) && t.interrupted) {
			s.writeError(w, err) // an interrupted task with images answers 200, as A1111 does
			return
		}
		out, n, err := s.a1111Result(t)
		if err != nil {
			s.writeError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, out)
		s.met.served(n)
	}
}

// callerTasks returns the caller's admitted A1111 tasks: only its own work
// is its business on a shared service. id, when set, picks one task.
func (s *Server) callerTasks(r *http.Request, id string) []*task {
	me := identity(r)
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*task
	for t := range s.active {
		if t.api == apiA1111 && t.owner == me && (id == "" || t.id == id) {
			out = append(out, t)
		}
	}
	return out
}

// handleProgress reports the caller's oldest running A1111 task, or the one
// ?id_task= names.
func (s *Server) handleProgress(w http.ResponseWriter, r *http.Request) {
	tasks := s.callerTasks(r, r.URL.Query().Get("id_task"))
	var cur *task
	for _, t := range tasks {
		t.mu.Lock()
		if t.state == stateRunning && (cur == nil || t.started.Before(cur.started)) {
			cur = t
		}
		t.mu.Unlock()
	}
	count := len(tasks)
	type state struct {
		Skipped       bool   `json:"skipped"`
		Interrupted   bool   `json:"interrupted"`
		Job           string `json:"job"`
		JobCount      int    `json:"job_count"`
		JobTimestamp  string `json:"job_timestamp"`
		JobNo         int    `json:"job_no"`
		SamplingStep  int    `json:"sampling_step"`
		SamplingSteps int    `json:"sampling_steps"`
	}
	out := struct {
		Progress     float64 `json:"progress"`
		ETARelative  float64 `json:"eta_relative"`
		State        state   `json:"state"`
		CurrentImage *string `json:"current_image"`
		TextInfo     *string `json:"textinfo"`
	}{State: state{JobCount: count}}
	if cur != nil {
		step, total, _ := cur.progress()
		cur.mu.Lock()
		started := cur.started
		cur.mu.Unlock()
		out.State.Job = cur.id
		out.State.JobTimestamp = started.UTC().Format("20060102150405")
		out.State.SamplingStep, out.State.SamplingSteps = step, total
		if total > 0 {
			out.Progress = float64(step) / float64(total)
		}
		if out.Progress > 0 {
			el := time.Since(started).Seconds()
			out.ETARelative = el/out.Progress - el
		}
		if r.URL.Query().Get("skip_current_image") != "true" {
			out.CurrentImage = cur.previewPNG()
		}
		info := fmt.Sprintf("Sampling step %d/%d", step, total)
		out.TextInfo = &info
	}
	writeJSON(w, http.StatusOK, out)
}

// handleInterrupt interrupts the caller's A1111 tasks, or the one its
// id_task names (?id_task= or a JSON body {"id_task": …}); never another
// identity's. As in AUTOMATIC1111, an interrupted request returns 200 with
// the images as far as they got.
func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("id_task")
	if id == "" && r.ContentLength != 0 {
		var in struct {
			IDTask string `json:"id_task"`
		}
		release, err := s.decode(w, r, &in)
		if err != nil {
			s.writeError(w, err)
			return
		}
		release()
		id = in.IDTask
	}
	n := 0
	for _, t := range s.callerTasks(r, id) {
		t.interrupt()
		n++
	}
	writeJSON(w, http.StatusOK, map[string]any{"interrupted": n})
}

// samplerNames are A1111's names of the sampler and schedule t ran.
func (s *Server) samplerNames(t *task) (sampler, schedule string) {
	if t.spec.names.sampler != "" {
		return t.spec.names.sampler, t.spec.names.schedule
	}
	return a1111Names(t.results[0].Request.Scheduler)
}

// previewPNG is the latest preview of t's first running request, at the
// image size, as base64 PNG; nil before the first step.
func (t *task) previewPNG() *string {
	t.mu.Lock()
	var img image.Image
	var r sd.Request
	for i, p := range t.previews {
		if p != nil {
			img, r = p, t.resolved[i]
			break
		}
	}
	t.mu.Unlock()
	if img == nil || r.Width == 0 {
		return nil
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, scaled(img, r.Width, r.Height)); err != nil {
		return nil
	}
	b64 := base64.StdEncoding.EncodeToString(buf.Bytes())
	return &b64
}
