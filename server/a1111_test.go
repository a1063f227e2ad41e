package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
)

// shapeOf names the JSON type of v as the golden shapes do.
func shapeOf(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	return fmt.Sprintf("%T", v)
}

// checkShape checks got against a golden shape: every field the shape has
// is there, with one of its types.
func checkShape(t *testing.T, what string, shape, got any) {
	t.Helper()
	switch sh := shape.(type) {
	case string:
		if !strings.Contains("|"+sh+"|", "|"+shapeOf(got)+"|") {
			t.Errorf("%s: %s, want %s", what, shapeOf(got), sh)
		}
	case []any:
		list, ok := got.([]any)
		if !ok {
			t.Errorf("%s: %s, want a list", what, shapeOf(got))
			return
		}
		for i, item := range list {
			checkShape(t, fmt.Sprintf("%s[%d]", what, i), sh[0], item)
		}
	case map[string]any:
		obj, ok := got.(map[string]any)
		if !ok {
			t.Errorf("%s: %s, want an object", what, shapeOf(got))
			return
		}
		for k, f := range sh {
			v, ok := obj[k]
			if !ok {
				t.Errorf("%s: no field %q", what, k)
				continue
			}
			checkShape(t, what+"."+k, f, v)
		}
	}
}

func loadShapes(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("testdata/a1111_shapes.json")
	if err != nil {
		t.Fatal(err)
	}
	var shapes map[string]any
	if err := json.Unmarshal(b, &shapes); err != nil {
		t.Fatal(err)
	}
	return shapes
}

// frontEndBody is a txt2img body as A1111 front-ends send it: the fields
// they set, and many more at A1111's defaults.
const frontEndBody = `{"prompt":"a red circle","negative_prompt":"blurry","sampler_name":"Euler","scheduler":"Automatic",
"steps":4,"cfg_scale":7,"width":64,"height":64,"seed":42,"subseed":-1,"subseed_strength":0,"batch_size":1,"n_iter":1,
"restore_faces":false,"tiling":false,"enable_hr":true,"hr_scale":2,"hr_upscaler":"Latent","hr_second_pass_steps":0,
"denoising_strength":0.7,"styles":[],"seed_resize_from_h":-1,"seed_resize_from_w":-1,"eta":null,"s_churn":0,"s_noise":1,
"override_settings":{"CLIP_stop_at_last_layers":1,"sd_vae":"Automatic"},"override_settings_restore_afterwards":true,
"script_args":[],"alwayson_scripts":{},"send_images":true,"save_images":false,"do_not_save_grid":true,"do_not_save_samples":true,
"sampler_index":"Euler"}`

// TestA1111Probes calls every endpoint a front-end calls at connect and
// checks each answer against A1111's own response shapes.
func TestA1111Probes(t *testing.T) {
	_, ts := newServer(t, Config{ModelName: "tiny", ModelSHA256: strings.Repeat("ab12", 16), FastSteps: 4})
	shapes := loadShapes(t)
	body := strings.Replace(frontEndBody, `"enable_hr":true`, `"enable_hr":false`, 1)
	calls := map[string]string{
		"POST /sdapi/v1/txt2img": body, "POST /sdapi/v1/img2img": fmt.Sprintf(`{"prompt":"x","steps":2,"init_images":[%q]}`, pngBase64(t, 64, 64)),
		"POST /sdapi/v1/options":   `{"sd_model_checkpoint":"tiny","CLIP_stop_at_last_layers":1}`,
		"POST /sdapi/v1/interrupt": "", "POST /sdapi/v1/refresh-checkpoints": "",
	}
	var pngInfo string
	names := make([]string, 0, len(shapes))
	for k := range shapes {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		method, path, ok := strings.Cut(name, " ")
		if !ok || !strings.HasPrefix(path, "/") || path == "/sdapi/v1/png-info" {
			continue
		}
		var r response
		if method == http.MethodGet {
			r = get(t, ts.URL+path)
		} else {
			r = post(t, ts.URL+path, calls[name])
		}
		if r.code != http.StatusOK {
			t.Errorf("%s: %d %s", name, r.code, r.body)
			continue
		}
		var got any
		r.json(t, &got)
		checkShape(t, name, shapes[name], got)
		switch path {
		case "/sdapi/v1/progress":
			checkShape(t, "progress state", shapes["progress state"], got.(map[string]any)["state"])
		case "/sdapi/v1/txt2img":
			var info any
			if err := json.Unmarshal([]byte(got.(map[string]any)["info"].(string)), &info); err != nil {
				t.Fatal(err)
			}
			checkShape(t, "txt2img info", shapes["txt2img info"], info)
			pngInfo = got.(map[string]any)["images"].([]any)[0].(string)
			p := got.(map[string]any)["parameters"].(map[string]any)
			if p["width"] != 64.0 || p["batch_size"] != 1.0 || p["seed"] != 42.0 || p["sampler_name"] != "Euler" {
				t.Errorf("parameters echo %v, want what ran", p)
			}
		}
	}
	r := post(t, ts.URL+"/sdapi/v1/png-info", fmt.Sprintf(`{"image":%q}`, pngInfo))
	var got any
	r.json(t, &got)
	checkShape(t, "png-info", shapes["POST /sdapi/v1/png-info"], got)

	var opts map[string]any
	get(t, ts.URL+"/sdapi/v1/options").json(t, &opts)
	if opts["sd_model_checkpoint"] != "tiny [ab12ab12ab]" {
		t.Errorf("options: sd_model_checkpoint %v, want the model's A1111 title", opts["sd_model_checkpoint"])
	}
	var models []map[string]any
	get(t, ts.URL+"/sdapi/v1/sd-models").json(t, &models)
	if len(models) != 1 || models[0]["hash"] != "ab12ab12ab" || models[0]["model_name"] != "tiny" {
		t.Errorf("sd-models %v, want the server's one model", models)
	}
	for _, tc := range []struct{ path, body string }{
		{"/sdapi/v1/options", `{"sd_model_checkpoint":"other"}`},
		{"/sdapi/v1/options", `{"CLIP_stop_at_last_layers":2}`},
		{"/sdapi/v1/txt2img", `{"prompt":"x","override_settings":{"sd_model_checkpoint":"other"}}`},
	} {
		if r := post(t, ts.URL+tc.path, tc.body); r.code != http.StatusBadRequest {
			t.Errorf("%s %s: %d, want 400", tc.path, tc.body, r.code)
		}
	}
	if r := post(t, ts.URL+"/sdapi/v1/skip", ""); r.code != http.StatusNotImplemented {
		t.Errorf("skip: %d, want 501", r.code)
	}
}

// TestA1111Fields: what the server cannot do is refused with every such
// field named, or listed as warnings with leniency; the same body at
// A1111's defaults runs.
func TestA1111Fields(t *testing.T) {
	_, ts := newServer(t, Config{})
	r := post(t, ts.URL+"/sdapi/v1/txt2img", frontEndBody)
	if r.code != http.StatusBadRequest {
		t.Fatalf("enable_hr: %d %s, want 400", r.code, r.body)
	}
	msg, _, param := r.apiErr(t)
	if param != "enable_hr" || !strings.Contains(msg, "hires fix") || !strings.Contains(msg, "hr_scale") {
		t.Errorf("refusal %q (param %q) does not name enable_hr and its fields", msg, param)
	}
	body := strings.NewReplacer(`"restore_faces":false`, `"restore_faces":true`, `"s_churn":0`, `"s_churn":0.5`).Replace(frontEndBody)
	body = strings.Replace(body, `"prompt"`, `"bogus_field":1,"prompt"`, 1)
	r = post(t, ts.URL+"/sdapi/v1/txt2img", body)
	msg, _, _ = r.apiErr(t)
	for _, f := range []string{"enable_hr", "restore_faces", "s_churn", "bogus_field: not a field"} {
		if !strings.Contains(msg, f) {
			t.Errorf("refusal %q does not name %s", msg, f)
		}
	}
	r = post(t, ts.URL+"/sdapi/v1/txt2img", body, lenientHeader, "true")
	if r.code != http.StatusOK {
		t.Fatalf("lenient: %d %s", r.code, r.body)
	}
	var out a1111Response
	r.json(t, &out)
	var info struct{ Warnings []string }
	if err := json.Unmarshal([]byte(out.Info), &info); err != nil {
		t.Fatal(err)
	}
	// bogus_field, enable_hr and the 3 hires fields it sets, restore_faces, s_churn
	if len(info.Warnings) != 7 || !strings.Contains(strings.Join(info.Warnings, " "), "restore_faces") {
		t.Errorf("lenient warnings %q, want the 7 fields ignored", info.Warnings)
	}
	for _, tc := range []struct {
		body        string
		code        int
		param, want string
	}{
		{`{"prompt":"x","scheduler":"Exponential","sampler_name":"Euler"}`, 400, "scheduler", "Exponential schedule is not supported"},
		{`{"prompt":"x","sampler_name":"Euler a","scheduler":"Karras"}`, 400, "scheduler", "no Karras"},
		{`{"prompt":"x","sampler_index":"Nope"}`, 400, "sampler_index", "unknown sampler"},
		{`{"prompt":"x","override_settings":{"CLIP_stop_at_last_layers":2}}`, 400, "override_settings.CLIP_stop_at_last_layers", "clip skip 2 is not supported"},
		{`{"prompt":"x","override_settings":{"sd_vae":"other.vae.pt"}}`, 400, "override_settings.sd_vae", "VAE"},
		{`{"prompt":"x","eta":0.5,"sampler_name":"Euler a"}`, 400, "eta", "eta 1"},
		{`{"prompt":"x","subseed_strength":2}`, 400, "subseed_strength", "outside"},
	} {
		r := post(t, ts.URL+"/sdapi/v1/txt2img", tc.body)
		if r.code != tc.code {
			t.Errorf("%s: %d %s, want %d", tc.body, r.code, r.body, tc.code)
			continue
		}
		msg, _, param := r.apiErr(t)
		if param != tc.param || !strings.Contains(msg, tc.want) {
			t.Errorf("%s: %q (param %q), want %q about %s", tc.body, msg, param, tc.want, tc.param)
		}
	}
}

// a1111Run runs a txt2img body and returns its images and infotexts.
func a1111Run(t *testing.T, base, body string) (imgs []image.Image, infotexts []string, info map[string]any) {
	t.Helper()
	r := post(t, base+"/sdapi/v1/txt2img", body)
	if r.code != http.StatusOK {
		t.Fatalf("%s: %d %s", body, r.code, r.body)
	}
	var out a1111Response
	r.json(t, &out)
	if err := json.Unmarshal([]byte(out.Info), &info); err != nil {
		t.Fatal(err)
	}
	for _, b := range out.Images {
		img, text := decodePNG(t, b)
		imgs, infotexts = append(imgs, img), append(infotexts, text)
	}
	return imgs, infotexts, info
}

func samePixels(a, b image.Image) bool {
	if a.Bounds() != b.Bounds() {
		return false
	}
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			r1, g1, b1, a1 := a.At(x, y).RGBA()
			r2, g2, b2, a2 := b.At(x, y).RGBA()
			if r1 != r2 || g1 != g2 || b1 != b2 || a1 != a2 {
				return false
			}
		}
	}
	return true
}

// TestA1111Samplers: sampler_index is sampler_name's fallback, the
// schedule type picks the Karras variant, and the infotext and png-info
// speak A1111's names, read back by A1111's rules.
func TestA1111Samplers(t *testing.T) {
	_, ts := newServer(t, Config{ModelName: "tiny", ModelSHA256: strings.Repeat("0123456789", 7)[:64]})
	karras, texts, _ := a1111Run(t, ts.URL, `{"prompt":"a, b: c","steps":4,"seed":5,"sampler_index":"Euler","scheduler":"Karras"}`)
	legacy, _, _ := a1111Run(t, ts.URL, `{"prompt":"a, b: c","steps":4,"seed":5,"sampler_name":"Euler Karras"}`)
	plain, _, _ := a1111Run(t, ts.URL, `{"prompt":"a, b: c","steps":4,"seed":5,"sampler_name":"Euler"}`)
	if !samePixels(karras[0], legacy[0]) {
		t.Error(`sampler_index "Euler" with scheduler Karras differs from "Euler Karras"`)
	}
	if samePixels(karras[0], plain[0]) {
		t.Error("the Karras schedule changed nothing")
	}
	text := texts[0]
	for _, want := range []string{"Sampler: Euler,", "Schedule type: Karras", "Model hash: 0123456789", "Model: tiny", "RNG: CPU", "Version: sdpipe", "CFG scale: "} {
		if !strings.Contains(text, want) {
			t.Errorf("infotext %q lacks %q", text, want)
		}
	}
	r := post(t, ts.URL+"/sdapi/v1/png-info", fmt.Sprintf(`{"image":%q}`, pngBase64Of(t, karras[0], text)))
	var pi struct {
		Info       string
		Parameters map[string]any
	}
	r.json(t, &pi)
	want := map[string]any{"Prompt": "a, b: c", "Steps": "4", "Sampler": "Euler", "Schedule type": "Karras", "Seed": "5",
		"Size-1": "64", "Size-2": "64", "Model hash": "0123456789", "Model": "tiny", "RNG": "CPU", "Clip skip": "1"}
	for k, v := range want {
		if pi.Parameters[k] != v {
			t.Errorf("png-info %s = %v, want %v (infotext %q)", k, pi.Parameters[k], v, pi.Info)
		}
	}
	// A1111's rule for legacy texts: a sampler ending in a schedule label
	p := parseInfotext("x\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 512x768")
	if p["Sampler"] != "DPM++ 2M" || p["Schedule type"] != "Karras" || p["Size-2"] != "768" || p["RNG"] != "GPU" {
		t.Errorf("legacy infotext parsed as %v", p)
	}
}

// TestA1111Variation: with subseed_strength every image has the seed and
// its own subseed, as A1111 numbers them; strength 1 is the subseed's own
// noise, so the image equals the subseed's image.
func TestA1111Variation(t *testing.T) {
	_, ts := newServer(t, Config{})
	imgs, texts, info := a1111Run(t, ts.URL, `{"prompt":"x","steps":3,"width":64,"height":64,"seed":10,"subseed":20,"subseed_strength":0.5,"batch_size":2,"sampler_name":"Euler"}`)
	if fmt.Sprint(info["all_seeds"]) != "[10 10]" || fmt.Sprint(info["all_subseeds"]) != "[20 21]" {
		t.Errorf("seeds %v subseeds %v, want [10 10] and [20 21]", info["all_seeds"], info["all_subseeds"])
	}
	if !strings.Contains(texts[1], "Seed: 10,") || !strings.Contains(texts[1], "Variation seed: 21, Variation seed strength: 0.5") {
		t.Errorf("infotext %q", texts[1])
	}
	if samePixels(imgs[0], imgs[1]) {
		t.Error("two variations are the same image")
	}
	full, _, _ := a1111Run(t, ts.URL, `{"prompt":"x","steps":3,"width":64,"height":64,"seed":10,"subseed":20,"subseed_strength":1,"sampler_name":"Euler"}`)
	sub, _, _ := a1111Run(t, ts.URL, `{"prompt":"x","steps":3,"width":64,"height":64,"seed":20,"sampler_name":"Euler"}`)
	if !samePixels(full[0], sub[0]) {
		t.Error("subseed_strength 1 is not the subseed's image")
	}
}

// TestA1111ProgressPreview: /sdapi/v1/progress has a live preview image
// and names the task (id_task) while it runs.
func TestA1111ProgressPreview(t *testing.T) {
	_, ts := newServer(t, Config{})
	done := make(chan response, 1)
	go func() {
		done <- post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"long","steps":900,"seed":1,"force_task_id":"task(abc)"}`)
	}()
	var p struct {
		CurrentImage *string `json:"current_image"`
		State        struct{ Job string }
	}
	waitFor(t, "a preview", func() bool {
		get(t, ts.URL+"/sdapi/v1/progress?id_task=task(abc)").json(t, &p)
		return p.CurrentImage != nil
	})
	if p.State.Job != "task(abc)" {
		t.Errorf("state.job %q, want the task id", p.State.Job)
	}
	if img, _ := decodePNG(t, *p.CurrentImage); img.Bounds().Dx() != 64 {
		t.Errorf("preview %v", img.Bounds())
	}
	post(t, ts.URL+"/sdapi/v1/interrupt", `{"id_task":"task(abc)"}`)
	if r := <-done; r.code != http.StatusOK {
		t.Errorf("interrupted: %d", r.code)
	}
}

// pngBase64Of encodes img as a base64 PNG with the infotext.
func pngBase64Of(t *testing.T, img image.Image, infotext string) string {
	t.Helper()
	var buf bytes.Buffer
	if err := encodePNG(&buf, img, infotext); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}
