package server

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"regexp"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"

	xdraw "golang.org/x/image/draw"

	"github.com/sdpipe/sdpipe/sd"
)

// Infotexts in AUTOMATIC1111's vocabulary: the "parameters" text of every
// PNG the service writes, and what /sdapi/v1/png-info reads back. A1111's
// own reader (parse_generation_parameters) and its "PNG Info" tab read
// them: the sampler and schedule type by A1111's names, Model and Model
// hash (the first 10 hex digits of the model's SHA-256, as A1111 shows
// it), Variation seed, RNG: CPU (the server draws noise as A1111 does with
// its "CPU" random number source), and Version.

// infoField is one "Key: value" of an infotext.
type infoField struct{ k, v string }

// imageInfo is what an infotext says about one image.
type imageInfo struct {
	img              image.Image
	req              sd.Request // resolved
	seed             int64
	subseed          int64
	subseedStrength  float64
	sampler          string // A1111's names
	schedule         string
	model, modelHash string
	loraHashes       string // A1111's "Lora hashes": "name: hash, ..." of the LoRAs the prompt applies
	interrupted      bool   // the image is the preview of an interrupted request
}

// version is what infotexts give as Version: the module's version, or
// its VCS revision for a development build.
var version = sync.OnceValue(func() string {
	v := "sdpipe"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if m := bi.Main.Version; m != "" && m != "(devel)" {
		return v + " " + m
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return v + " " + s.Value[:12]
		}
	}
	return v
})

// pyFloat formats f as Python's str(float) does for the values infotexts
// hold (7.0, 0.75), so that the text reads as A1111's.
func pyFloat(f float64) string {
	s := strconv.FormatFloat(f, 'g', -1, 64)
	if !strings.ContainsAny(s, ".eEn") { // n: NaN, Inf
		s += ".0"
	}
	return s
}

// a1111Quote quotes a value as A1111's infotext writer does: as JSON when
// it holds a comma, a colon or a newline.
func a1111Quote(v string) string {
	if !strings.ContainsAny(v, ",:\n") {
		return v
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
	return strings.TrimSuffix(b.String(), "\n")
}

// infotext returns the A1111 "parameters" text of one image.
func (ii imageInfo) infotext() string {
	r := ii.req
	f := []infoField{
		{"Steps", strconv.Itoa(r.Steps)},
		{"Sampler", ii.sampler},
		{"Schedule type", ii.schedule},
		{"CFG scale", pyFloat(derefOr(r.GuidanceScale, 0))},
		{"Seed", strconv.FormatInt(ii.seed, 10)},
		{"Size", fmt.Sprintf("%dx%d", r.Width, r.Height)},
	}
	if ii.modelHash != "" {
		f = append(f, infoField{"Model hash", ii.modelHash})
	}
	if ii.model != "" {
		f = append(f, infoField{"Model", ii.model})
	}
	if ii.loraHashes != "" {
		f = append(f, infoField{"Lora hashes", ii.loraHashes})
	}
	if ii.subseedStrength != 0 {
		f = append(f, infoField{"Variation seed", strconv.FormatInt(ii.subseed, 10)}, infoField{"Variation seed strength", pyFloat(ii.subseedStrength)})
	}
	if r.InitImage != nil {
		f = append(f, infoField{"Denoising strength", pyFloat(r.Strength)})
	}
	if r.Mask != nil {
		for _, kv := range r.Inpaint.Fields() {
			f = append(f, infoField{kv[0], kv[1]})
		}
	}
	if r.Eta != 0 {
		f = append(f, infoField{"Eta DDIM", pyFloat(r.Eta)})
	}
	if r.GuidanceRescale != 0 {
		f = append(f, infoField{"CFG Rescale", pyFloat(r.GuidanceRescale)})
	}
	f = append(f, infoField{"RNG", rngName(r)})
	if ii.interrupted {
		f = append(f, infoField{"Interrupted", "preview"})
	}
	f = append(f, infoField{"Version", version()})
	var b strings.Builder
	b.WriteString(r.Prompt)
	if r.NegativePrompt != "" {
		b.WriteString("\nNegative prompt: " + r.NegativePrompt)
	}
	b.WriteString("\n")
	for i, kv := range f {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(kv.k + ": " + a1111Quote(kv.v))
	}
	return strings.TrimSpace(b.String())
}

// rngName is A1111's name of a generator's random number source ("CPU":
// torch.randn on the CPU), or the engine's for numpy, which A1111 lacks.
func rngName(r sd.Request) string {
	if sd.IsA1111Noise(r) {
		return "CPU"
	}
	return r.Generator.String()
}

// A1111's infotext grammar: the last line holds "Key: value" pairs, a
// value either a JSON string or anything up to the next comma.
var (
	reInfoParam = regexp.MustCompile(`\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)`)
	reInfoSize  = regexp.MustCompile(`^(\d+)x(\d+)$`)
)

// parseInfotext reads an infotext as A1111's parse_generation_parameters
// does: the prompt lines, "Negative prompt:" and the lines after it, and
// the last line's pairs when it has at least 3; sizes split into "-1" and
// "-2" keys; values stay strings; and the defaults A1111 fills in for the
// keys a text leaves out that this server's texts can hold.
func parseInfotext(text string) map[string]any {
	res := map[string]any{}
	lines := strings.Split(strings.TrimSpace(text), "\n")
	last := lines[len(lines)-1]
	lines = lines[:len(lines)-1]
	if len(reInfoParam.FindAllStringSubmatch(last, -1)) < 3 {
		lines = append(lines, last)
		last = ""
	}
	var prompt, negative string
	done := false
	for _, line := range lines {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "Negative prompt:") {
			done = true
			line = strings.TrimSpace(line[len("Negative prompt:"):])
		}
		if done {
			negative = joinLine(negative, line)
		} else {
			prompt = joinLine(prompt, line)
		}
	}
	res["Prompt"], res["Negative prompt"] = prompt, negative
	for _, m := range reInfoParam.FindAllStringSubmatch(last, -1) {
		k, v := m[1], m[2]
		if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
			var u string
			if err := json.Unmarshal([]byte(v), &u); err == nil {
				v = u
			}
		}
		if sz := reInfoSize.FindStringSubmatch(v); sz != nil {
			res[k+"-1"], res[k+"-2"] = sz[1], sz[2]
			continue
		}
		res[k] = v
	}
	defaults := []struct {
		k string
		v any
	}{
		{"Clip skip", "1"}, {"RNG", "GPU"}, {"Schedule type", "Automatic"},
		{"Schedule max sigma", 0}, {"Schedule min sigma", 0}, {"Schedule rho", 0},
		{"VAE Encoder", "Full"}, {"VAE Decoder", "Full"},
	}
	for _, d := range defaults {
		if _, ok := res[d.k]; !ok {
			res[d.k] = d.v
		}
	}
	// a legacy sampler name carries its schedule ("DPM++ 2M Karras")
	if s, ok := res["Sampler"].(string); ok && res["Schedule type"] == "Automatic" {
		for _, sc := range a1111Schedules {
			if sc.name != "automatic" && strings.HasSuffix(s, " "+sc.label) {
				res["Sampler"], res["Schedule type"] = strings.TrimSuffix(s, " "+sc.label), sc.label
			}
		}
	}
	return res
}

func joinLine(a, b string) string {
	if a == "" {
		return b
	}
	return a + "\n" + b
}

// loraHasher is an Engine that computes A1111's "Lora hashes" of the
// LoRAs a request applies (sd.Model.LoRAHashes).
type loraHasher interface {
	LoRAHashes(r sd.Request) string
}

// loraHashes returns A1111's "Lora hashes" value for the LoRAs r applies
// on eng, "" when the engine names none.
func loraHashes(eng Engine, r sd.Request) string {
	if f, ok := eng.(loraHasher); ok {
		return f.LoRAHashes(r)
	}
	return ""
}

// imageInfos describes every image of t, in order: its results, then (for
// an interrupted task) the previews of the requests it did not finish.
func (s *Server) imageInfos(t *task) []imageInfo {
	var out []imageInfo
	k := 0
	model, eng := t.runOn()
	if model == nil {
		model = s.models.defaultModel()
	}
	for j, res := range t.results {
		for i, img := range res.Images {
			ii := imageInfo{
				img: img, req: res.Request, seed: res.Seeds[i],
				sampler: t.spec.names.sampler, schedule: t.spec.names.schedule,
				model: model.name, modelHash: model.shortHash(), loraHashes: loraHashes(eng, res.Request),
				interrupted: j < len(t.partial) && t.partial[j],
			}
			if ii.sampler == "" {
				ii.sampler, ii.schedule = a1111Names(res.Request.Scheduler)
			}
			if st := t.spec.subseedStrength; st != 0 {
				ii.seed = t.spec.reqs[0].Seed // A1111: one seed, a subseed per image
				ii.subseed, ii.subseedStrength = t.spec.subseed+int64(k), st
			}
			out = append(out, ii)
			k++
		}
	}
	return out
}

// runOn returns the model t ran on, and its engine (nil when the task
// never got it).
func (t *task) runOn() (*modelEntry, Engine) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.model == nil {
		return t.spec.model, nil
	}
	return t.model, t.eng
}

// scaled returns img scaled to w × h (bilinear), or img at that size.
func scaled(img image.Image, w, h int) image.Image {
	b := img.Bounds()
	if b.Dx() == w && b.Dy() == h {
		return img
	}
	dst := image.NewNRGBA(image.Rect(0, 0, w, h))
	xdraw.BiLinear.Scale(dst, dst.Bounds(), img, b, xdraw.Src, nil)
	return dst
}

// derefOr returns *p, or or for nil (a resolved request always has its
// guidance set).
func derefOr(p *float64, or float64) float64 {
	if p == nil {
		return or
	}
	return *p
}
