package server

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/sd"
)

// The AUTOMATIC1111 endpoints a front-end calls at connect and around a
// generation (Open WebUI and SillyTavern probe options and sd-models
// first), in A1111's JSON shapes (its modules/api/models.py), with what
// this server really has: its models, the samplers and schedule types the
// engine runs, no upscalers, VAEs, LoRAs, embeddings, styles or scripts.
// What the server cannot do answers 501 naming what is missing.

func (s *Server) a1111Routes(api func(string, http.HandlerFunc)) {
	api("GET /sdapi/v1/options", s.handleOptions)
	api("POST /sdapi/v1/options", s.handleSetOptions)
	api("GET /sdapi/v1/cmd-flags", s.handleCmdFlags)
	api("GET /sdapi/v1/samplers", s.handleSamplers)
	api("GET /sdapi/v1/schedulers", s.handleSchedulers)
	api("GET /sdapi/v1/upscalers", s.handleUpscalers)
	api("GET /sdapi/v1/latent-upscale-modes", emptyList)
	api("GET /sdapi/v1/sd-models", s.handleSDModels)
	api("GET /sdapi/v1/sd-modules", emptyList)
	api("GET /sdapi/v1/sd-vae", emptyList)
	api("GET /sdapi/v1/hypernetworks", emptyList)
	api("GET /sdapi/v1/face-restorers", emptyList)
	api("GET /sdapi/v1/realesrgan-models", emptyList)
	api("GET /sdapi/v1/prompt-styles", emptyList)
	api("GET /sdapi/v1/loras", s.handleLoRAs)
	api("GET /sdapi/v1/embeddings", s.handleEmbeddings)
	api("GET /sdapi/v1/memory", s.handleMemory)
	api("GET /sdapi/v1/scripts", s.handleScripts)
	api("GET /sdapi/v1/script-info", emptyList)
	api("GET /sdapi/v1/extensions", emptyList)
	api("POST /sdapi/v1/png-info", s.handlePNGInfo)
	for _, p := range []string{"refresh-checkpoints", "refresh-vae", "refresh-loras", "refresh-embeddings"} {
		api("POST /sdapi/v1/"+p, s.handleRefresh) // the server's lists do not change while it runs
	}
	api("POST /sdapi/v1/unload-checkpoint", s.handleUnload)
	api("POST /sdapi/v1/reload-checkpoint", s.handleReload)
	for p, why := range map[string]string{
		"skip":               "skipping one image of a batch is not supported: use /sdapi/v1/interrupt",
		"interrogate":        "interrogation (CLIP, DeepBooru) is not supported: the server has no captioning model",
		"extra-single-image": "upscaling and face restoration (extras) are not supported: the server has no upscaler",
		"extra-batch-images": "upscaling and face restoration (extras) are not supported: the server has no upscaler",
	} {
		api("POST /sdapi/v1/"+p, s.notImplemented(why))
	}
}

func emptyList(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, []any{}) }

func (s *Server) notImplemented(why string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		refuseEarly(w, r)
		s.writeError(w, &apiError{Status: http.StatusNotImplemented, Type: "not_implemented", Msg: why})
	}
}

func (s *Server) handleRefresh(w http.ResponseWriter, r *http.Request) {
	refuseEarly(w, r)
	if r.URL.Path == "/sdapi/v1/refresh-checkpoints" {
		if err := s.models.Refresh(); err != nil {
			s.writeError(w, &apiError{Status: http.StatusInternalServerError, Type: "server_error", Msg: "refreshing the models failed", cause: err})
			return
		}
	}
	writeJSON(w, http.StatusOK, nil)
}

// handleUnload is A1111's unload-checkpoint: it closes the models loaded
// from the models folder that no request uses (a model given to New stays
// loaded); the next request for one loads it again.
func (s *Server) handleUnload(w http.ResponseWriter, r *http.Request) {
	refuseEarly(w, r)
	s.models.unloadIdle()
	writeJSON(w, http.StatusOK, nil)
}

// handleReload is A1111's reload-checkpoint: it loads the default model.
func (s *Server) handleReload(w http.ResponseWriter, r *http.Request) {
	refuseEarly(w, r)
	if err := s.models.setDefault(r.Context(), s.models.defaultModel()); err != nil {
		s.writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, nil)
}

// checkModelName returns the model a name names (see Models.find), or a
// 400 naming param.
func (s *Server) checkModelName(param, name string) (*modelEntry, error) {
	return s.models.find(param, name)
}

// options are the A1111 settings the server has, at the values it runs.
func (s *Server) options() map[string]any {
	d := s.models.defaultModel()
	return map[string]any{
		"sd_model_checkpoint":         d.title,
		"sd_checkpoint_hash":          d.sha256,
		"sd_vae":                      "Automatic",
		"CLIP_stop_at_last_layers":    1,
		"samples_format":              "png",
		"samples_save":                false,
		"enable_pnginfo":              true,
		"randn_source":                "CPU",
		"eta_ddim":                    0.0,
		"eta_ancestral":               1.0,
		"eta_noise_seed_delta":        0,
		"live_previews_enable":        true,
		"show_progress_every_n_steps": 1,
		"live_previews_image_format":  "png",
		"add_model_hash_to_info":      d.sha256 != "",
		"add_model_name_to_info":      true,
		"add_version_to_infotext":     true,
		"img2img_fix_steps":           false,
		"sd_lora":                     "None",
		"sdpipe_max_size":             s.cfg.MaxSize,
		"sdpipe_max_steps":            s.cfg.MaxSteps,
		"sdpipe_max_images":           s.cfg.MaxImages,
	}
}

func (s *Server) handleOptions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, s.options())
}

// handleSetOptions takes the settings A1111 clients set: the model (one the
// server has), and any setting at the value the server runs. Others are
// refused, or ignored with a warning header when the caller is lenient.
func (s *Server) handleSetOptions(w http.ResponseWriter, r *http.Request) {
	var in map[string]json.RawMessage
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	release()
	cur := s.options()
	var problems []string
	var model *modelEntry
	for k, v := range in {
		if k == "sd_model_checkpoint" {
			var name string
			if json.Unmarshal(v, &name) != nil {
				s.writeError(w, badRequest(k, "sd_model_checkpoint: want a string"))
				return
			}
			if model, err = s.checkModelName(k, name); err != nil {
				s.writeError(w, err)
				return
			}
			continue
		}
		have, ok := cur[k]
		if !ok {
			problems = append(problems, k+": not a setting of this server")
			continue
		}
		hb, _ := json.Marshal(have)
		if !jsonEqual(v, string(hb)) {
			problems = append(problems, fmt.Sprintf("%s: fixed at %s on this server", k, hb))
		}
	}
	sort.Strings(problems)
	if len(problems) > 0 {
		if !s.cfg.Lenient && !strings.EqualFold(r.Header.Get(lenientHeader), "true") {
			param, _, _ := strings.Cut(problems[0], ":")
			s.writeError(w, badRequest(param, "unsupported settings: %s", strings.Join(problems, "; ")))
			return
		}
		w.Header().Set("Sdpipe-Warnings", strings.Join(problems, "; "))
	}
	if model != nil { // A1111 loads the model before it answers
		if err := s.models.setDefault(r.Context(), model); err != nil {
			s.writeError(w, err)
			return
		}
	}
	writeJSON(w, http.StatusOK, nil)
}

func (s *Server) handleCmdFlags(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{
		"api": true, "nowebui": false, "api_log": false,
		"api_auth": nil, "api_server_stop": false,
		"ckpt": s.models.defaultModel().file, "ckpt_dir": s.models.dir(), "vae_dir": nil, "lora_dir": nil, "embeddings_dir": nil,
		"no_half": true, "no_half_vae": true, "lowvram": false, "medvram": false,
		"skip_version_check": true, "disable_safe_unpickle": false,
	})
}

func (s *Server) handleSamplers(w http.ResponseWriter, r *http.Request) {
	type sampler struct {
		Name    string         `json:"name"`
		Aliases []string       `json:"aliases"`
		Options map[string]any `json:"options"`
	}
	have := schedulers()
	out := []sampler{}
	for _, x := range a1111Samplers {
		if slices.Contains(have, x.plain) {
			out = append(out, sampler{Name: x.name, Aliases: x.aliases, Options: x.options})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) handleSchedulers(w http.ResponseWriter, r *http.Request) {
	type schedule struct {
		Name           string   `json:"name"`
		Label          string   `json:"label"`
		Aliases        []string `json:"aliases"`
		DefaultRho     *float64 `json:"default_rho"`
		NeedInnerModel bool     `json:"need_inner_model"`
	}
	out := []schedule{}
	for _, x := range a1111Schedules {
		out = append(out, schedule{Name: x.name, Label: x.label, Aliases: x.aliases, DefaultRho: x.rho, NeedInnerModel: x.inner})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleUpscalers lists A1111's "None", the one upscaler choice the server
// has (no upscaling).
func (s *Server) handleUpscalers(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, []map[string]any{{"name": "None", "model_name": nil, "model_path": nil, "model_url": nil, "scale": 4}})
}

// handleSDModels lists the models as A1111's /sdapi/v1/sd-models.
func (s *Server) handleSDModels(w http.ResponseWriter, r *http.Request) {
	out := []map[string]any{}
	for _, e := range s.models.list() {
		var hash, sha any
		if h := e.shortHash(); h != "" {
			hash, sha = h, e.sha256
		}
		out = append(out, map[string]any{
			"title": e.title, "model_name": e.name, "hash": hash, "sha256": sha,
			"filename": e.file, "config": nil,
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// modelFiles is an Engine that offers LoRAs and embeddings by name
// (sd.Model with a single-file checkpoint and WithLoRADir or
// WithEmbeddingsDir).
type modelFiles interface {
	LoRAs() []sd.ModelFile
	LoRA(name string) (sd.ModelFile, bool)
	Embeddings() []sd.ModelFile
}

// handleLoRAs lists the LoRAs prompts may name (<lora:name:multiplier>),
// as A1111's /sdapi/v1/loras.
func (s *Server) handleLoRAs(w http.ResponseWriter, r *http.Request) {
	out := []map[string]any{}
	if f, ok := s.defaultEngine().(modelFiles); ok {
		for _, l := range f.LoRAs() {
			out = append(out, map[string]any{"name": l.Name, "alias": l.Name, "path": l.Path, "metadata": map[string]any{}})
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// handleEmbeddings lists the textual-inversion embeddings prompts may use,
// as A1111's /sdapi/v1/embeddings.
func (s *Server) handleEmbeddings(w http.ResponseWriter, r *http.Request) {
	loaded := map[string]any{}
	if f, ok := s.defaultEngine().(modelFiles); ok {
		for _, e := range f.Embeddings() {
			loaded[e.Name] = map[string]any{"step": nil, "sd_checkpoint": nil, "sd_checkpoint_name": nil, "shape": e.Width, "vectors": e.Vectors}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"loaded": loaded, "skipped": map[string]any{}})
}

func (s *Server) handleScripts(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"txt2img": []string{}, "img2img": []string{}})
}

// handleMemory reports the machine's memory (Linux's /proc/meminfo) and
// the process's, as A1111's ram and cuda sections (no CUDA here).
func (s *Server) handleMemory(w http.ResponseWriter, r *http.Request) {
	ram := map[string]any{}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		kb := map[string]float64{}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok {
				continue
			}
			if n, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64); err == nil {
				kb[k] = n * 1024
			}
		}
		_ = f.Close()
		if t := kb["MemTotal"]; t > 0 {
			ram["total"], ram["free"], ram["used"] = t, kb["MemAvailable"], t-kb["MemAvailable"]
		}
	}
	if len(ram) == 0 {
		ram["error"] = "memory statistics are not available on " + runtime.GOOS
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	ram["process_go_heap"] = ms.HeapAlloc
	writeJSON(w, http.StatusOK, map[string]any{"ram": ram, "cuda": map[string]any{"error": "CUDA is not used by this server"}})
}

// handlePNGInfo reads the infotext of a PNG, as A1111's png-info does:
// info is the "parameters" text, items the image's other text chunks,
// parameters the text parsed by A1111's rules.
func (s *Server) handlePNGInfo(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Image string `json:"image"`
	}
	release, err := s.decode(w, r, &in)
	if err != nil {
		s.writeError(w, err)
		return
	}
	defer release()
	b64 := strings.TrimSpace(in.Image)
	if strings.HasPrefix(b64, "data:") {
		if _, rest, ok := strings.Cut(b64, ","); ok {
			b64 = rest
		}
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(b64); err != nil {
			s.writeError(w, badRequest("image", "image: bad base64: %v", err))
			return
		}
	}
	chunks, err := pngTextChunks(raw)
	if err != nil {
		s.writeError(w, badRequest("image", "image: %v", err))
		return
	}
	info := chunks["parameters"]
	delete(chunks, "parameters")
	items := map[string]any{}
	for k, v := range chunks {
		items[k] = v
	}
	writeJSON(w, http.StatusOK, map[string]any{"info": info, "items": items, "parameters": parseInfotext(info)})
}

// pngTextChunks returns the tEXt and iTXt (uncompressed) chunks of a PNG.
func pngTextChunks(b []byte) (map[string]string, error) {
	const sig = "\x89PNG\r\n\x1a\n"
	if !bytes.HasPrefix(b, []byte(sig)) {
		return nil, fmt.Errorf("not a PNG image")
	}
	out := map[string]string{}
	b = b[len(sig):]
	for len(b) >= 12 {
		n := int(uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]))
		if n < 0 || n > len(b)-12 {
			return nil, fmt.Errorf("truncated PNG chunk")
		}
		typ, data := string(b[4:8]), b[8:8+n]
		switch typ {
		case "tEXt":
			if k, v, ok := bytes.Cut(data, []byte{0}); ok {
				out[string(k)] = latin1(v)
			}
		case "iTXt": // keyword, 0, compression flag, method, language, 0, translated, 0, text
			k, rest, ok := bytes.Cut(data, []byte{0})
			if ok && len(rest) >= 2 && rest[0] == 0 {
				if _, rest, ok = bytes.Cut(rest[2:], []byte{0}); ok {
					if _, text, ok := bytes.Cut(rest, []byte{0}); ok {
						out[string(k)] = string(text)
					}
				}
			}
		case "IEND":
			return out, nil
		}
		b = b[12+n:]
	}
	return out, nil
}

func latin1(b []byte) string {
	r := make([]rune, len(b))
	for i, c := range b {
		r[i] = rune(c)
	}
	return string(r)
}
