package server

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

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
	// Model names a model of the server's (see Models); "" means the
	// X-Amzn-SageMaker-Target-Model header's (a multi-model endpoint's
	// target), else the default.
	Model string `json:"model"`
}

// sageMakerTargetHeader names the model of a SageMaker multi-model
// endpoint's invocation.
const sageMakerTargetHeader = "X-Amzn-SageMaker-Target-Model"

func (s *Server) handleSageMaker(w http.ResponseWriter, r *http.Request) {
	var in sageMakerRequest
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	release() // the decoded body holds no images
	if len(in.Prompt.list) == 0 {
		s.writeError(w, badRequest("prompt", "prompt is required"))
		return
	}
	per := max(in.NumImagesPerPrompt, 1)
	if _, ok := product(s.cfg.MaxImages, in.NumImagesPerPrompt, len(in.Prompt.list)); !ok {
		s.writeError(w, badRequest("num_images_per_prompt", "num_images_per_prompt: %d prompts × %d images, want 1 to %d in all", len(in.Prompt.list), in.NumImagesPerPrompt, s.cfg.MaxImages))
		return
	}
	names := map[string]string{"steps": "num_inference_steps", "guidance": "guidance_scale", "sampler": "scheduler", "images": "num_images_per_prompt"}
	sp := &spec{model: s.models.defaultModel()}
	name, param := in.Model, "model"
	if name == "" {
		name, param = r.Header.Get(sageMakerTargetHeader), sageMakerTargetHeader
	}
	if name != "" {
		if sp.model, err = s.checkModelName(param, name); err != nil {
			s.writeError(w, err)
			return
		}
	}
	for k, p := range in.Prompt.list {
		var seed *int64
		if in.Seed != nil {
			v := *in.Seed
			if v >= 0 && v <= maxSeed {
				v += int64(k * per) // k*per < MaxImages: no overflow
			}
			seed = &v // build refuses the out-of-range ones
		}
		one, err := s.build(&common{
			prompt: p, negative: in.NegativePrompt, width: in.Width, height: in.Height,
			steps: in.NumInferenceSteps, quality: in.Quality, guidance: in.GuidanceScale, sampler: in.Scheduler,
			seed: seed, perRequest: in.NumImagesPerPrompt, names: names, model: sp.model,
		})
		if err != nil {
			s.writeError(w, err)
			return
		}
		sp.mode = one.mode
		sp.reqs = append(sp.reqs, one.reqs...)
	}
	format, err := sageMakerAccept(r.Header.Get("Accept"))
	if err != nil {
		s.writeError(w, err)
		return
	}
	if format != "" && len(in.Prompt.list)*per != 1 {
		s.writeError(w, &apiError{Status: http.StatusNotAcceptable, Type: "invalid_request_error", Param: "num_images_per_prompt",
			Msg: fmt.Sprintf("Accept %s returns one image, and this request makes %d: ask for application/json", format, len(in.Prompt.list)*per)})
		return
	}
	t, err := s.runSync(r, apiSageMaker, sp)
	if err != nil {
		s.writeError(w, err)
		return
	}
	if format != "" { // the raw image
		ii := s.imageInfos(t)[0]
		b, ctype, err := encodeImage(ii.img, &openAIOutput{format: strings.TrimPrefix(format, "image/"), compression: 95}, ii.infotext())
		if err != nil {
			s.writeError(w, err)
			return
		}
		w.Header().Set("Content-Type", ctype)
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		_, _ = w.Write(b)
		s.met.served(1)
		return
	}
	b64, _, _, err := s.images(t)
	if err != nil {
		s.writeError(w, err)
		return
	}
	s.met.served(len(b64))
	writeJSON(w, http.StatusOK, map[string]any{"generated_images": b64, "prompt": in.Prompt.raw})
}

// sageMakerAccept negotiates the response: "" for JSON (application/json,
// */* or none), or image/png or image/jpeg for the raw bytes of one image.
func sageMakerAccept(accept string) (string, error) {
	if strings.TrimSpace(accept) == "" {
		return "", nil
	}
	best, bestQ := "", -1.0
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if v, ok := params["q"]; ok {
			if q, err = strconv.ParseFloat(v, 64); err != nil {
				continue
			}
		}
		var f string
		switch mt {
		case "application/json", "*/*", "application/*":
			f = "json"
		case "image/png", "image/*":
			f = "image/png"
		case "image/jpeg":
			f = "image/jpeg"
		default:
			continue
		}
		if q > bestQ && q > 0 {
			best, bestQ = f, q
		}
	}
	switch best {
	case "":
		return "", &apiError{Status: http.StatusNotAcceptable, Type: "invalid_request_error", Msg: fmt.Sprintf("Accept %q: this endpoint returns application/json, image/png or image/jpeg", accept)}
	case "json":
		return "", nil
	}
	return best, nil
}
