package server

import (
	"net/http"
	"strconv"
	"strings"
	"time"
)

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
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	release() // the decoded body holds no images
	if in.Prompt == "" {
		s.writeError(w, badRequest("prompt", "prompt is required"))
		return
	}
	if f := in.ResponseFormat; f != "" && f != "b64_json" {
		s.writeError(w, badRequest("response_format", "response_format: only b64_json is supported, not %q", f))
		return
	}
	var width, height int
	if in.Size != "" && in.Size != "auto" {
		var ok bool
		if width, height, ok = parseSize(in.Size); !ok {
			s.writeError(w, badRequest("size", `size: %q is not "WIDTHxHEIGHT"`, in.Size))
			return
		}
	}
	if in.N < 0 {
		s.writeError(w, badRequest("n", "n: %d is negative", in.N))
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
		s.writeError(w, err)
		return
	}
	b64, err := s.runImages(r, apiOpenAI, sp)
	if err != nil {
		s.writeError(w, err)
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
func parseSize(v string) (w, h int, ok bool) {
	a, b, found := strings.Cut(strings.ToLower(v), "x")
	if !found {
		return 0, 0, false
	}
	w, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	return w, h, err1 == nil && err2 == nil
}
