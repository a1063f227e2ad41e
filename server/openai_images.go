package server

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"image"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// OpenAI's /v1/models, /v1/images/edits and the files behind
// response_format url.

func (s *Server) clientRoutes(open, api func(string, http.HandlerFunc)) {
	api("GET /v1/models", s.handleModels)
	api("GET /v1/models/{id}", s.handleModel)
	api("POST /v1/images/edits", s.handleOpenAIEdit)
	api("POST /v1/images/variations", s.notImplemented("image variations are not supported: use /v1/images/edits with a prompt"))
	// like OpenAI's image URLs, these need no token: the name is a
	// 128-bit secret, and it expires
	open("GET /v1/images/files/{name}", s.handleImageFile)
	s.slackRoutes(open) // slack.go
}

var started = time.Now()

func modelObject(e *modelEntry) map[string]any {
	return map[string]any{"id": e.name, "object": "model", "created": started.Unix(), "owned_by": "sdpipe"}
}

// handleModels lists the models as OpenAI's GET /v1/models, by name.
func (s *Server) handleModels(w http.ResponseWriter, r *http.Request) {
	data := []any{}
	for _, e := range s.models.list() {
		data = append(data, modelObject(e))
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

// handleModel is OpenAI's GET /v1/models/{id}: 404 model_not_found for a
// model the server has not got.
func (s *Server) handleModel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	e, err := s.models.find("model", id)
	if err != nil {
		s.writeError(w, &apiError{Status: http.StatusNotFound, Type: "invalid_request_error", Param: "model",
			Msg: fmt.Sprintf("the model %q does not exist on this server (GET /v1/models lists them)", id)})
		return
	}
	writeJSON(w, http.StatusOK, modelObject(e))
}

// requireMultipart accepts a multipart/form-data body from the page's own
// origin (or a client that sends none): a cross-site form can post
// multipart, so a browser's Origin must be this server's.
func requireMultipart(r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error",
			Msg: fmt.Sprintf("Content-Type %q: send the edit as multipart/form-data (image, mask, prompt, …)", r.Header.Get("Content-Type"))}
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		if err != nil || u.Host != r.Host {
			return &apiError{Status: http.StatusForbidden, Type: "invalid_request_error", Msg: fmt.Sprintf("a cross-origin form (Origin %s) may not post to this server", o)}
		}
	}
	return nil
}

// handleOpenAIEdit is POST /v1/images/edits: image-to-image from one
// image and a prompt, inpainting with a mask (a PNG whose transparent
// pixels are edited, as OpenAI's; the rest of the image comes back as
// sent).
func (s *Server) handleOpenAIEdit(w http.ResponseWriter, r *http.Request) {
	body, release, err := s.readBodyOf(w, r, requireMultipart)
	if err != nil {
		s.writeError(w, err)
		return
	}
	defer release()
	_, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	form, err := multipart.NewReader(bytes.NewReader(body), params["boundary"]).ReadForm(s.cfg.MaxBodyBytes)
	if err != nil {
		s.writeError(w, badRequest("", "malformed multipart body: %v", err))
		return
	}
	defer func() { _ = form.RemoveAll() }()
	val := func(k string) string {
		if v := form.Value[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	files := append(form.File["image"], form.File["image[]"]...)
	if val("mask") != "" {
		s.writeError(w, badRequest("mask", "mask: send it as a PNG file part"))
		return
	}
	if len(form.File["mask"]) > 1 {
		s.writeError(w, badRequest("mask", "mask: want one file, got %d", len(form.File["mask"])))
		return
	}
	if len(files) != 1 {
		s.writeError(w, badRequest("image", "image: want one image file, got %d (several reference images are not supported)", len(files)))
		return
	}
	in := openAIRequest{
		Prompt: val("prompt"), Size: val("size"), ResponseFormat: val("response_format"), Quality: val("quality"),
		Model: val("model"), OutputFormat: val("output_format"), Background: val("background"),
		User: val("user"), NegativePrompt: val("negative_prompt"),
	}
	ints := map[string]*int{"n": &in.N, "partial_images": &in.PartialImages}
	for k, p := range ints {
		if v := val(k); v != "" {
			if *p, err = strconv.Atoi(v); err != nil {
				s.writeError(w, badRequest(k, "%s: %q is not an integer", k, v))
				return
			}
		}
	}
	if v := val("output_compression"); v != "" {
		c, err := strconv.Atoi(v)
		if err != nil {
			s.writeError(w, badRequest("output_compression", "output_compression: %q is not an integer", v))
			return
		}
		in.OutputCompression = &c
	}
	if v := val("seed"); v != "" {
		seed, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			s.writeError(w, badRequest("seed", "seed: %q is not an integer", v))
			return
		}
		in.Seed = &seed
	}
	if v := val("stream"); v != "" {
		if in.Stream, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, badRequest("stream", "stream: %q is not true or false", v))
			return
		}
	}
	strength := 0.75 // AUTOMATIC1111's img2img default
	if len(form.File["mask"]) == 1 {
		strength = 1 // the masked region is made anew, as OpenAI's edits
	}
	if v := val("strength"); v != "" {
		if strength, err = strconv.ParseFloat(v, 64); err != nil {
			s.writeError(w, badRequest("strength", "strength: %q is not a number", v))
			return
		}
	}
	switch val("input_fidelity") {
	case "", "low", "high":
	default:
		s.writeError(w, badRequest("input_fidelity", "input_fidelity: %q is not low or high", val("input_fidelity")))
		return
	}
	o, err := s.openAIOptions(&in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	o.edit = true
	width, height, err := openAISize(in.Size)
	if err != nil {
		s.writeError(w, err)
		return
	}
	raw, err := readPart(files[0], s.cfg.MaxBodyBytes)
	if err != nil {
		s.writeError(w, badRequest("image", "image: %v", err))
		return
	}
	img, err := s.decodeImageBytes("image", raw, width, height)
	if err != nil {
		s.writeError(w, err)
		return
	}
	b := img.Bounds()
	var mask image.Image
	if len(form.File["mask"]) == 1 {
		if mask, err = s.openAIMask(form.File["mask"][0], b.Dx(), b.Dy()); err != nil {
			s.writeError(w, err)
			return
		}
	}
	sp, err := s.build(&common{
		prompt: in.Prompt, negative: in.NegativePrompt, width: b.Dx(), height: b.Dy(),
		quality: orDefault(in.Quality, modeFast), seed: in.Seed, perRequest: in.N,
		init: img, strength: strength, mask: mask, model: o.model,
		names: map[string]string{"width": "size", "height": "size", "images": "n"},
	})
	if err != nil {
		s.writeError(w, err)
		return
	}
	release() // the task holds the decoded image, not the body
	s.runOpenAI(w, r, sp, o)
}

// openAIMask reads an edit's mask, resized to the image's w × h: OpenAI's
// convention, its fully transparent pixels are edited and the rest kept.
func (s *Server) openAIMask(fh *multipart.FileHeader, w, h int) (image.Image, error) {
	raw, err := readPart(fh, s.cfg.MaxBodyBytes)
	if err != nil {
		return nil, badRequest("mask", "mask: %v", err)
	}
	m, err := s.decodeImageBytes("mask", raw, w, h)
	if err != nil {
		return nil, err
	}
	g := maskOf(m, true)
	for _, v := range g.Pix {
		if v != 0 {
			return g, nil
		}
	}
	return nil, badRequest("mask", "mask: no transparent pixels: the transparent areas of the mask are the ones edited")
}

func readPart(fh *multipart.FileHeader, limit int64) ([]byte, error) {
	f, err := fh.Open()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, limit))
}

// ---- the files behind response_format url

const (
	fileTTL      = time.Hour // OpenAI's image URLs last an hour too
	fileMaxBytes = 256 << 20
)

// fileStore keeps encoded images for an hour, 256 MiB of them at most
// (the oldest go first).
type fileStore struct {
	mu    sync.Mutex
	byID  map[string]*storedFile
	order []*storedFile
	bytes int
}

type storedFile struct {
	name    string
	data    []byte
	ctype   string
	expires time.Time
}

// put stores b and returns its absolute URL, from the request's host.
func (f *fileStore) put(r *http.Request, b []byte, ctype string) string {
	var id [16]byte
	_, _ = rand.Read(id[:])
	ext := ".png"
	if ctype == "image/webp" {
		ext = ".webp"
	}
	if ctype == "image/jpeg" {
		ext = ".jpeg"
	}
	sf := &storedFile{name: hex.EncodeToString(id[:]) + ext, data: b, ctype: ctype, expires: time.Now().Add(fileTTL)}
	f.mu.Lock()
	if f.byID == nil {
		f.byID = map[string]*storedFile{}
	}
	f.prune(time.Now())
	for len(f.order) > 0 && f.bytes+len(b) > fileMaxBytes {
		f.drop()
	}
	f.byID[sf.name] = sf
	f.order = append(f.order, sf)
	f.bytes += len(b)
	f.mu.Unlock()
	scheme := "http"
	if r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https") {
		scheme = "https"
	}
	return scheme + "://" + r.Host + "/v1/images/files/" + sf.name
}

func (f *fileStore) drop() {
	old := f.order[0]
	f.order = f.order[1:]
	delete(f.byID, old.name)
	f.bytes -= len(old.data)
}

// prune drops the expired files; f.mu is held.
func (f *fileStore) prune(now time.Time) {
	for len(f.order) > 0 && now.After(f.order[0].expires) {
		f.drop()
	}
}

func (f *fileStore) get(name string) (*storedFile, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.prune(time.Now())
	sf, ok := f.byID[name]
	return sf, ok
}

var errFileGone = errors.New("no such image: it expired (image URLs last an hour) or never existed")

func (s *Server) handleImageFile(w http.ResponseWriter, r *http.Request) {
	sf, ok := s.files.get(r.PathValue("name"))
	if !ok {
		s.writeError(w, &apiError{Status: http.StatusNotFound, Type: "not_found", Msg: errFileGone.Error()})
		return
	}
	w.Header().Set("Content-Type", sf.ctype)
	w.Header().Set("Content-Length", strconv.Itoa(len(sf.data)))
	w.Header().Set("Cache-Control", "private, max-age="+strconv.Itoa(int(time.Until(sf.expires).Seconds())))
	w.Header().Set("Expires", sf.expires.UTC().Format(http.TimeFormat))
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(sf.data)
}
