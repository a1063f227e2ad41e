package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/jpeg"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// ---- OpenAI images API: POST /v1/images/generations, POST
// /v1/images/edits (openai_images.go), GET /v1/models, and streaming
// (openai_stream.go). Errors come in the SDKs' envelope, {"error":
// {"message", "type", "param", "code"}}, on every 4xx and 5xx.

type openAIRequest struct {
	Prompt            string `json:"prompt"`
	N                 int    `json:"n"`
	Size              string `json:"size"`
	ResponseFormat    string `json:"response_format"`
	Quality           string `json:"quality"`
	Model             string `json:"model"`
	OutputFormat      string `json:"output_format"`
	OutputCompression *int   `json:"output_compression"`
	Background        string `json:"background"`
	Moderation        string `json:"moderation"`
	Style             string `json:"style"`
	Stream            bool   `json:"stream"`
	PartialImages     int    `json:"partial_images"`
	User              string `json:"user"`
	NegativePrompt    string `json:"negative_prompt"` // an extension
	Seed              *int64 `json:"seed"`            // an extension
}

// openAIModels are OpenAI's image model names, which a client may send
// unchanged: each means the server's own model.
var openAIModels = []string{"dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"}

// openAIOutput is how an OpenAI request wants its images.
type openAIOutput struct {
	format      string // png, jpeg or webp
	compression int    // JPEG quality, 0 to 100
	url         bool   // response_format url
	quality     string
	stream      bool
	partials    int
	edit        bool        // for the stream's event names
	model       *modelEntry // the model field's; nil: the default
}

// openAIOptions checks the fields every OpenAI images request shares.
func (s *Server) openAIOptions(in *openAIRequest) (*openAIOutput, error) {
	if in.Prompt == "" {
		return nil, badRequest("prompt", "prompt is required")
	}
	model, err := s.checkOpenAIModel(in.Model)
	if err != nil {
		return nil, err
	}
	o := &openAIOutput{format: "png", compression: 100, quality: in.Quality, stream: in.Stream, partials: in.PartialImages, model: model}
	switch f := strings.ToLower(in.OutputFormat); f {
	case "", "png":
	case "jpeg", "jpg":
		o.format = "jpeg"
	case "webp":
		o.format = "webp" // lossless: output_compression does not shrink it
	default:
		return nil, badRequest("output_format", "output_format: %q is not png, jpeg or webp", in.OutputFormat)
	}
	if c := in.OutputCompression; c != nil {
		if *c < 0 || *c > 100 {
			return nil, badRequest("output_compression", "output_compression: %d is outside [0, 100]", *c)
		}
		if o.format == "png" && *c != 100 {
			return nil, badRequest("output_compression", "output_compression: applies to jpeg (and webp) only; PNG is lossless")
		}
		o.compression = *c
	}
	switch in.ResponseFormat {
	case "", "b64_json":
	case "url":
		o.url = true
	default:
		return nil, badRequest("response_format", "response_format: %q is not b64_json or url", in.ResponseFormat)
	}
	switch in.Background {
	case "", "auto", "opaque":
	case "transparent":
		return nil, badRequest("background", "background: transparent is not supported: the model makes opaque images (use opaque or auto)")
	default:
		return nil, badRequest("background", "background: %q is not transparent, opaque or auto", in.Background)
	}
	switch in.Moderation {
	case "", "auto", "low": // the server has no moderation model: nothing is filtered either way
	default:
		return nil, badRequest("moderation", "moderation: %q is not low or auto", in.Moderation)
	}
	if in.Style != "" {
		return nil, badRequest("style", "style: vivid and natural are DALL·E 3 styles this model has not got; describe the style in the prompt")
	}
	if in.PartialImages < 0 || in.PartialImages > 3 {
		return nil, badRequest("partial_images", "partial_images: %d is outside [0, 3]", in.PartialImages)
	}
	if in.PartialImages > 0 && !in.Stream {
		return nil, badRequest("partial_images", "partial_images: needs stream: true")
	}
	if in.N < 0 {
		return nil, badRequest("n", "n: %d is negative", in.N)
	}
	return o, nil
}

// checkOpenAIModel returns the model the model field names (by any name
// A1111 accepts, see Models.find), or nil for none and for OpenAI's image
// model names, which mean the default model (a client written for OpenAI
// runs unchanged). An unknown name is a 400 invalid_request_error on
// param "model", as OpenAI answers an invalid value.
func (s *Server) checkOpenAIModel(m string) (*modelEntry, error) {
	if m == "" || slices.Contains(openAIModels, m) || s.models.unnamed() {
		return nil, nil
	}
	if e, err := s.checkModelName("model", m); err == nil {
		return e, nil
	}
	var ids []string
	for _, e := range s.models.list() {
		ids = append(ids, fmt.Sprintf("%q", e.name))
	}
	return nil, badRequest("model", "model: no model %q on this server (it serves %s, and OpenAI's image model names mean the default, %q; GET /v1/models)", m, strings.Join(ids, ", "), s.models.defaultModel().name)
}

// openAISize parses size ("WIDTHxHEIGHT" or "auto").
func openAISize(v string) (w, h int, err error) {
	if v == "" || v == "auto" {
		return 0, 0, nil
	}
	w, h, ok := parseSize(v)
	if !ok {
		return 0, 0, badRequest("size", `size: %q is not "WIDTHxHEIGHT" or "auto"`, v)
	}
	return w, h, nil
}

func (s *Server) handleOpenAI(w http.ResponseWriter, r *http.Request) {
	var in openAIRequest
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	release() // the decoded body holds no images
	o, err := s.openAIOptions(&in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	width, height, err := openAISize(in.Size)
	if err != nil {
		s.writeError(w, err)
		return
	}
	sp, err := s.build(&common{
		prompt: in.Prompt, negative: in.NegativePrompt, width: width, height: height,
		quality: orDefault(in.Quality, modeFast), seed: in.Seed, perRequest: in.N, model: o.model,
		names: map[string]string{"width": "size", "height": "size", "images": "n"},
	})
	if err != nil {
		s.writeError(w, err)
		return
	}
	s.runOpenAI(w, r, sp, o)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// runOpenAI runs sp and answers in OpenAI's shape: a stream of events, or
// one JSON body.
func (s *Server) runOpenAI(w http.ResponseWriter, r *http.Request, sp *spec, o *openAIOutput) {
	w.Header().Set("Sdpipe-Model", sp.model.name)
	if o.stream {
		s.streamOpenAI(w, r, sp, o)
		return
	}
	t, err := s.runSync(r, apiOpenAI, sp)
	if err != nil {
		s.writeError(w, err)
		return
	}
	data, err := s.openAIData(r, t, o)
	if err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.openAIBody(t, o, data))
	s.met.served(len(data))
}

// openAIBody is the response to a finished task.
func (s *Server) openAIBody(t *task, o *openAIOutput, data []map[string]any) map[string]any {
	return map[string]any{
		"created": time.Now().Unix(), "data": data,
		"background": "opaque", "output_format": o.format, "quality": o.respQuality(), "size": t.size(),
	}
}

// respQuality is the quality a response names: OpenAI's word for what ran.
func (o *openAIOutput) respQuality() string {
	switch o.quality {
	case "low", "medium", "high", "standard", "hd", "auto":
		return o.quality
	}
	return "auto"
}

// size is the task's image size as OpenAI writes it.
func (t *task) size() string {
	if len(t.results) == 0 {
		return ""
	}
	r := t.results[0].Request
	return fmt.Sprintf("%dx%d", r.Width, r.Height)
}

// openAIData encodes t's images as o asks: b64_json or a url.
func (s *Server) openAIData(r *http.Request, t *task, o *openAIOutput) ([]map[string]any, error) {
	var data []map[string]any
	for _, ii := range s.imageInfos(t) {
		b, ctype, err := encodeImage(ii.img, o, ii.infotext())
		if err != nil {
			return nil, err
		}
		d := map[string]any{"revised_prompt": ii.req.Prompt}
		if o.url {
			d["url"] = s.files.put(r, b, ctype)
		} else {
			d["b64_json"] = base64.StdEncoding.EncodeToString(b)
		}
		data = append(data, d)
	}
	return data, nil
}

// encodeImage writes img in o's format: PNG with the infotext, JPEG at
// o's quality, or lossless WebP.
func encodeImage(img image.Image, o *openAIOutput, infotext string) ([]byte, string, error) {
	var buf bytes.Buffer
	if o.format == "webp" {
		if err := sd.EncodeWebP(&buf, img); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), "image/webp", nil
	}
	if o.format == "jpeg" {
		if err := jpeg.Encode(&buf, img, &jpeg.Options{Quality: max(o.compression, 1)}); err != nil {
			return nil, "", err
		}
		return buf.Bytes(), "image/jpeg", nil
	}
	if err := encodePNG(&buf, img, infotext); err != nil {
		return nil, "", err
	}
	return buf.Bytes(), "image/png", nil
}

func parseSize(v string) (w, h int, ok bool) {
	a, b, found := strings.Cut(strings.ToLower(v), "x")
	if !found {
		return 0, 0, false
	}
	w, err1 := strconv.Atoi(a)
	h, err2 := strconv.Atoi(b)
	return w, h, err1 == nil && err2 == nil
}
