package server

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"
)

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
	// ForceTaskID names the task, as AUTOMATIC1111's UI does, so that
	// /sdapi/v1/interrupt and /sdapi/v1/progress can name it (id_task).
	ForceTaskID string `json:"force_task_id,omitempty"`
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
		in.InitImages = nil // the decoded image is what the task keeps
		c.width, c.height = img.Bounds().Dx(), img.Bounds().Dy()
		if c.strength == 0 {
			c.strength = 0.75 // AUTOMATIC1111's default
		}
	} else if len(in.InitImages) > 0 {
		return nil, badRequest("init_images", "init_images: use /sdapi/v1/img2img")
	}
	if in.ForceTaskID != "" && !validTaskID(in.ForceTaskID) {
		return nil, badRequest("force_task_id", "force_task_id: want 1 to 64 letters, digits or -_.()")
	}
	sp, err := s.build(c)
	if err != nil {
		return nil, err
	}
	sp.a11, sp.id = in, in.ForceTaskID
	return sp, nil
}

type a1111Response struct {
	Images     []string      `json:"images"`
	Parameters *a1111Request `json:"parameters"`
	Info       string        `json:"info"`
}

// a1111Result is t's response, with the number of images in it.
func (s *Server) a1111Result(t *task) (*a1111Response, int, error) {
	b64, infotexts, seeds, err := s.images(t.results)
	if err != nil {
		return nil, 0, err
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
		return nil, 0, err
	}
	return &a1111Response{Images: b64, Parameters: in, Info: string(b)}, n, nil
}

func (s *Server) handleA1111(img2img bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var in a1111Request
		release, err := s.decode(w, r, &in)
		if err != nil {
			s.writeError(w, err)
			return
		}
		sp, err := s.a1111Spec(&in, img2img)
		release()
		if err != nil {
			s.writeError(w, err)
			return
		}
		t, err := s.runSync(r, apiA1111, sp)
		if err != nil {
			s.writeError(w, err)
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

func (s *Server) handleSamplers(w http.ResponseWriter, r *http.Request) {
	type sampler struct {
		Name    string            `json:"name"`
		Aliases []string          `json:"aliases"`
		Options map[string]string `json:"options"`
	}
	out := make([]sampler, 0, len(s.samplers))
	for _, n := range s.samplers {
		out = append(out, sampler{Name: n, Aliases: []string{}, Options: map[string]string{}})
	}
	writeJSON(w, http.StatusOK, out)
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
	}
	writeJSON(w, http.StatusOK, out)
}

// handleInterrupt interrupts the caller's A1111 tasks, or the one its
// id_task names (?id_task= or a JSON body {"id_task": …}); never another
// identity's.
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
		t.cancel(errInterrupted)
		n++
	}
	writeJSON(w, http.StatusOK, map[string]any{"interrupted": n})
}
