package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestTxt2Img(t *testing.T) {
	_, ts := newServer(t, Config{})
	body := `{"prompt":"a red circle","negative_prompt":"blurry","seed":3,"steps":6,"batch_size":2,"n_iter":2,"sampler_name":"Euler a","cfg_scale":5}`
	r := post(t, ts.URL+"/sdapi/v1/txt2img", body)
	if r.code != http.StatusOK {
		t.Fatalf("status %d: %s", r.code, r.body)
	}
	if got := r.header.Get("X-Replica-ID"); got != "test" {
		t.Errorf("X-Replica-ID = %q, want test", got)
	}
	var out struct {
		Images     []string
		Parameters map[string]any
		Info       string
	}
	r.json(t, &out)
	var info struct {
		AllSeeds    []int64  `json:"all_seeds"`
		Infotexts   []string `json:"infotexts"`
		SamplerName string   `json:"sampler_name"`
		Steps       int
		Width       int
	}
	if err := json.Unmarshal([]byte(out.Info), &info); err != nil {
		t.Fatalf("info is not a JSON string: %v", err)
	}
	if diff := cmp.Diff([]int64{3, 4, 5, 6}, info.AllSeeds); diff != "" {
		t.Errorf("all_seeds (-want +got):\n%s", diff)
	}
	if len(out.Images) != 4 || len(info.Infotexts) != 4 {
		t.Fatalf("%d images, %d infotexts, want 4", len(out.Images), len(info.Infotexts))
	}
	for i, b64 := range out.Images {
		img, params := decodePNG(t, b64)
		if b := img.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
			t.Errorf("image %d is %v, want the tiny model's 64×64", i, b)
		}
		if params != info.Infotexts[i] {
			t.Errorf("image %d: PNG parameters %q, infotext %q", i, params, info.Infotexts[i])
		}
		for _, want := range []string{"a red circle", "Negative prompt: blurry", "Steps: 6", "Sampler: Euler a", fmt.Sprintf("Seed: %d", 3+i)} {
			if !strings.Contains(params, want) {
				t.Errorf("image %d: infotext %q lacks %q", i, params, want)
			}
		}
	}
	if info.Steps != 6 || info.SamplerName != "Euler a" || info.Width != 64 {
		t.Errorf("info = %+v", info)
	}
	if out.Parameters["prompt"] != "a red circle" || out.Parameters["batch_size"] != 2.0 {
		t.Errorf("parameters = %v", out.Parameters)
	}

	// the same seed gives the same image, alone or in a batch
	r2 := post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"a red circle","negative_prompt":"blurry","seed":5,"steps":6,"sampler_name":"Euler a","cfg_scale":5}`)
	var out2 struct{ Images []string }
	r2.json(t, &out2)
	if len(out2.Images) != 1 || out2.Images[0] != out.Images[2] {
		t.Errorf("seed 5 alone differs from seed 5 in the batch")
	}
}

func pngBase64(t *testing.T, w, h int) string {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.Set(x, y, color.NRGBA{uint8(4 * x), uint8(4 * y), 200, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(buf.Bytes())
}

func TestImg2Img(t *testing.T) {
	_, ts := newServer(t, Config{})
	tests := []struct {
		name, image string
		w, h        int
	}{
		{"same size", pngBase64(t, 64, 64), 0, 0},
		{"data URL", "data:image/png;base64," + pngBase64(t, 64, 64), 64, 64},
		{"resized", pngBase64(t, 80, 72), 64, 64},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := fmt.Sprintf(`{"prompt":"a blue square","init_images":[%q],"denoising_strength":0.5,"steps":8,"seed":1,"width":%d,"height":%d}`, tc.image, tc.w, tc.h)
			r := post(t, ts.URL+"/sdapi/v1/img2img", body)
			if r.code != http.StatusOK {
				t.Fatalf("status %d: %s", r.code, r.body)
			}
			var out struct {
				Images     []string
				Parameters map[string]any
				Info       string
			}
			r.json(t, &out)
			if len(out.Images) != 1 {
				t.Fatalf("%d images", len(out.Images))
			}
			img, _ := decodePNG(t, out.Images[0])
			if b := img.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
				t.Errorf("image is %v", b)
			}
			if _, ok := out.Parameters["init_images"]; ok {
				t.Errorf("parameters echo the init image")
			}
			if !strings.Contains(out.Info, `"denoising_strength":0.5`) {
				t.Errorf("info lacks the strength: %s", out.Info)
			}
		})
	}
}

func TestSageMaker(t *testing.T) {
	_, ts := newServer(t, Config{})
	for _, tc := range []struct {
		prompt string
		images int
	}{
		{`"a cat"`, 2},
		{`["a cat", "a dog"]`, 4},
	} {
		body := fmt.Sprintf(`{"prompt":%s,"width":64,"height":64,"num_inference_steps":5,"guidance_scale":6,"negative_prompt":"x","num_images_per_prompt":2,"seed":10}`, tc.prompt)
		r := post(t, ts.URL+"/invocations", body)
		if r.code != http.StatusOK {
			t.Fatalf("%s: status %d: %s", tc.prompt, r.code, r.body)
		}
		var out struct {
			GeneratedImages []string        `json:"generated_images"`
			Prompt          json.RawMessage `json:"prompt"`
		}
		r.json(t, &out)
		if len(out.GeneratedImages) != tc.images {
			t.Errorf("%s: %d images, want %d", tc.prompt, len(out.GeneratedImages), tc.images)
		}
		var seeds []string
		for _, b := range out.GeneratedImages {
			_, p := decodePNG(t, b)
			seeds = append(seeds, regexp.MustCompile(`Seed: \d+`).FindString(p))
		}
		if slices.Sort(seeds); len(slices.Compact(seeds)) != tc.images {
			t.Errorf("%s: seeds repeat: %v", tc.prompt, seeds)
		}
		var echo, want any
		_ = json.Unmarshal(out.Prompt, &echo)
		_ = json.Unmarshal([]byte(tc.prompt), &want)
		if diff := cmp.Diff(want, echo); diff != "" {
			t.Errorf("prompt echo (-want +got):\n%s", diff)
		}
	}
	if r := get(t, ts.URL+"/ping"); r.code != http.StatusOK {
		t.Errorf("GET /ping: %d", r.code)
	}
}

func TestOpenAI(t *testing.T) {
	_, ts := newServer(t, Config{FastSteps: 4})
	r := post(t, ts.URL+"/v1/images/generations", `{"prompt":"a lighthouse","n":2,"size":"64x64","response_format":"b64_json","model":"sd"}`)
	if r.code != http.StatusOK {
		t.Fatalf("status %d: %s", r.code, r.body)
	}
	var out struct {
		Created int64
		Data    []struct {
			B64JSON       string `json:"b64_json"`
			RevisedPrompt string `json:"revised_prompt"`
		}
	}
	r.json(t, &out)
	if len(out.Data) != 2 || out.Created == 0 {
		t.Fatalf("response %+v", out)
	}
	_, params := decodePNG(t, out.Data[0].B64JSON)
	if !strings.Contains(params, "Steps: 4") { // quality defaults to the fast mode
		t.Errorf("infotext %q: want the fast mode's 4 steps", params)
	}
}

func TestSamplersHealthIndex(t *testing.T) {
	_, ts := newServer(t, Config{ModelName: "tiny"})
	var samplers []struct{ Name string }
	get(t, ts.URL+"/sdapi/v1/samplers").json(t, &samplers)
	var names []string
	for _, s := range samplers {
		names = append(names, s.Name)
	}
	// A1111's names of the samplers the engine runs, each a name sd takes
	want := []string{"DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DDIM", "PLMS", "UniPC", "LCM", "DDPM", "DEIS", "DPMSolverSDEScheduler"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("samplers (-want +got):\n%s", diff)
	}
	for _, n := range names {
		if !slices.Contains(schedulers(), n) {
			t.Errorf("sampler %q is not a name sd.Schedulers has", n)
		}
	}
	var h map[string]string
	if r := get(t, ts.URL+"/healthz"); r.code != http.StatusOK {
		t.Errorf("healthz %d", r.code)
	} else if r.json(t, &h); h["status"] != "ok" || h["model"] != "tiny" {
		t.Errorf("healthz %v", h)
	}
	r := get(t, ts.URL+"/")
	if r.code != http.StatusOK || !strings.Contains(string(r.body), `<form id="form"`) || strings.Contains(string(r.body), "https://") {
		t.Errorf("GET /: %d, want the self-contained page", r.code)
	}
	if r := get(t, ts.URL+"/nope"); r.code != http.StatusNotFound {
		t.Errorf("GET /nope: %d", r.code)
	}
}

// TestErrors sends bad requests while a good one runs: each gets a 4xx with
// a clear message, and the good one is not disturbed.
func TestErrors(t *testing.T) {
	_, ts := newServer(t, Config{MaxBodyBytes: 64 << 10, MaxSize: 256, MaxImages: 4})
	good := make(chan response, 1)
	go func() {
		good <- post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"good","steps":30,"seed":1}`)
	}()
	huge := image.NewGray(image.Rect(0, 0, 512, 8))
	var hb bytes.Buffer
	_ = png.Encode(&hb, huge)
	tests := []struct {
		name, path, body string
		code             int
		param, msg       string
	}{
		{"malformed", "/sdapi/v1/txt2img", `{"prompt":`, 400, "", "malformed JSON"},
		{"syntax", "/sdapi/v1/txt2img", `{"prompt" "x"}`, 400, "", "malformed JSON at byte"},
		{"trailing", "/sdapi/v1/txt2img", `{"prompt":"x"} {}`, 400, "", "data after the object"},
		{"empty", "/sdapi/v1/txt2img", ``, 400, "", "empty request body"},
		{"array", "/sdapi/v1/txt2img", `[]`, 400, "", "must be a JSON object"},
		{"wrong type", "/sdapi/v1/txt2img", `{"steps":"ten"}`, 400, "steps", "wrong type"},
		{"float for int", "/sdapi/v1/txt2img", `{"width":64.5}`, 400, "width", "wrong type"},
		{"overflow", "/sdapi/v1/txt2img", `{"seed":1e40}`, 400, "seed", "wrong type"},
		{"huge width", "/sdapi/v1/txt2img", `{"width":1000000,"height":64}`, 400, "width", "largest size it serves is 256x256"},
		{"odd height", "/sdapi/v1/txt2img", `{"height":65}`, 400, "height", "multiple of 8"},
		{"huge steps", "/sdapi/v1/txt2img", `{"steps":100000}`, 400, "steps", "outside"},
		{"negative steps", "/sdapi/v1/txt2img", `{"steps":-1}`, 400, "steps", "outside"},
		{"huge batch", "/sdapi/v1/txt2img", `{"batch_size":1000,"n_iter":1000}`, 400, "batch_size×n_iter", "images"},
		{"bad seed", "/sdapi/v1/txt2img", `{"seed":-5}`, 400, "seed", "outside"},
		{"nan cfg", "/sdapi/v1/txt2img", `{"cfg_scale":1000}`, 400, "cfg_scale", "outside"},
		{"unknown sampler", "/sdapi/v1/txt2img", `{"sampler_name":"Bogus 3000"}`, 400, "sampler_name", "unknown sampler"},
		{"unknown quality", "/sdapi/v1/txt2img", `{"quality":"ultra"}`, 400, "quality", "unknown value"},
		{"long prompt", "/sdapi/v1/txt2img", `{"prompt":"` + strings.Repeat("a", 9000) + `"}`, 400, "prompt", "bytes"},
		{"body too large", "/sdapi/v1/txt2img", `{"prompt":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "", "larger than"},
		{"init in txt2img", "/sdapi/v1/txt2img", `{"init_images":["x"]}`, 400, "init_images", "img2img"},
		{"no init image", "/sdapi/v1/img2img", `{"prompt":"x"}`, 400, "init_images", "exactly one"},
		{"bad base64", "/sdapi/v1/img2img", `{"init_images":["!!notbase64!!"]}`, 400, "init_images", "bad base64"},
		{"not an image", "/sdapi/v1/img2img", `{"init_images":["aGVsbG8gd29ybGQ="]}`, 400, "init_images", "not a PNG"},
		{"huge image", "/sdapi/v1/img2img", fmt.Sprintf(`{"init_images":[%q]}`, base64.StdEncoding.EncodeToString(hb.Bytes())), 400, "init_images", "512x8"},
		{"bad strength", "/sdapi/v1/img2img", fmt.Sprintf(`{"init_images":[%q],"denoising_strength":2}`, pngBase64(t, 64, 64)), 400, "denoising_strength", "outside"},
		{"sagemaker no prompt", "/invocations", `{}`, 400, "prompt", "required"},
		{"sagemaker prompt type", "/invocations", `{"prompt":{"a":1}}`, 400, "prompt", "string or a list"},
		{"sagemaker too many", "/invocations", `{"prompt":["a","b","c"],"num_images_per_prompt":2}`, 400, "num_images_per_prompt", "want 1 to 4"},
		{"openai no prompt", "/v1/images/generations", `{"n":1}`, 400, "prompt", "required"},
		{"openai response format", "/v1/images/generations", `{"prompt":"x","response_format":"gif"}`, 400, "response_format", "b64_json or url"},
		{"openai gif", "/v1/images/generations", `{"prompt":"x","output_format":"gif"}`, 400, "output_format", "not png, jpeg or webp"},
		{"openai quality", "/v1/images/generations", `{"prompt":"x","quality":"ultra"}`, 400, "quality", "medium"},
		{"openai odd size", "/v1/images/generations", `{"prompt":"x","size":"100x100"}`, 400, "size", "multiple of 8"},
		{"openai size", "/v1/images/generations", `{"prompt":"x","size":"big"}`, 400, "size", "WIDTHxHEIGHT"},
		{"openai huge size", "/v1/images/generations", `{"prompt":"x","size":"1024x1024"}`, 400, "size", "limit of 256 pixels per side"},
		{"openai n", "/v1/images/generations", `{"prompt":"x","n":99}`, 400, "n", "images"},
		{"job malformed", "/v1/jobs", `{"prompt":1}`, 400, "prompt", "wrong type"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := post(t, ts.URL+tc.path, tc.body)
			if r.code != tc.code {
				t.Fatalf("status %d, want %d: %s", r.code, tc.code, r.body)
			}
			msg, _, param := r.apiErr(t)
			if param != tc.param {
				t.Errorf("param %q, want %q (%s)", param, tc.param, msg)
			}
			if !strings.Contains(msg, tc.msg) {
				t.Errorf("message %q lacks %q", msg, tc.msg)
			}
		})
	}
	if r := do(t, t.Context(), http.MethodGet, ts.URL+"/sdapi/v1/txt2img", ""); r.code != http.StatusMethodNotAllowed {
		t.Errorf("GET txt2img: %d", r.code)
	}
	if r := <-good; r.code != http.StatusOK {
		t.Errorf("the good request beside the bad ones: %d %s", r.code, r.body)
	}
}

func TestRecover(t *testing.T) {
	s, err := New(openModel(t), Config{})
	if err != nil {
		t.Fatal(err)
	}
	h := s.recoverer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") }))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusInternalServerError || !strings.Contains(rec.Body.String(), `"internal error"`) || strings.Contains(rec.Body.String(), "boom") {
		t.Errorf("panic gave %d %s, want a 500 that does not leak the panic", rec.Code, rec.Body)
	}
}

func TestAuth(t *testing.T) {
	_, ts := newServer(t, Config{Token: "s3cret"})
	for _, tc := range []struct {
		name, path string
		hdr        []string
		code       int
	}{
		{"missing", "/sdapi/v1/samplers", nil, 401},
		{"wrong", "/sdapi/v1/samplers", []string{"Authorization", "Bearer nope"}, 401},
		{"not bearer", "/v1/config", []string{"Authorization", "Basic czNjcmV0"}, 401},
		{"right", "/sdapi/v1/samplers", []string{"Authorization", "Bearer s3cret"}, 200},
		{"lower-case scheme", "/sdapi/v1/samplers", []string{"Authorization", "bearer s3cret"}, 200}, // #16 defect 9
		{"upper-case scheme", "/v1/config", []string{"Authorization", "BEARER  s3cret"}, 200},
		{"token as scheme", "/v1/config", []string{"Authorization", "s3cret"}, 401},
		{"healthz open", "/healthz", nil, 200},
		{"metrics open", "/metrics", nil, 200},
		{"page open", "/", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := get(t, ts.URL+tc.path, tc.hdr...)
			if r.code != tc.code {
				t.Fatalf("status %d, want %d", r.code, tc.code)
			}
			if tc.code == 401 && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without WWW-Authenticate: Bearer")
			}
		})
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":2}`); r.code != http.StatusUnauthorized {
		t.Errorf("txt2img without a token: %d", r.code)
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"steps":2}`, "Authorization", "Bearer s3cret"); r.code != http.StatusOK {
		t.Errorf("txt2img with the token: %d %s", r.code, r.body)
	}
}
