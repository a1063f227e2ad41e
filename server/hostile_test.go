package server

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"image"
	"image/png"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

// The hostile-input suite: each probe is what a careless or hostile client
// sends; each must get its clear refusal, and a good request sent right
// after must still succeed (the service is not damaged by the probe).

// probe is one hostile request and the status it must get.
type probe struct {
	name, method, path, body string
	hdr                      []string // header name, value, …
	code                     int
	msg                      string // the error message must contain it
}

// goodRequest is the cheap request that must succeed after each probe.
const goodRequest = `{"prompt":"a red circle","steps":1,"seed":1}`

func runProbes(t *testing.T, ts *httptest.Server, probes []probe) {
	t.Helper()
	for _, p := range probes {
		t.Run(p.name, func(t *testing.T) {
			method := p.method
			if method == "" {
				method = http.MethodPost
			}
			r := do(t, t.Context(), method, ts.URL+p.path, p.body, p.hdr...) // JSON unless hdr says otherwise
			if r.code != p.code {
				t.Fatalf("status %d, want %d: %.300s", r.code, p.code, r.body)
			}
			if p.msg != "" {
				if msg, _, _ := r.apiErr(t); !strings.Contains(msg, p.msg) {
					t.Errorf("message %q lacks %q", msg, p.msg)
				}
			}
			if g := post(t, ts.URL+"/sdapi/v1/txt2img", goodRequest); g.code != http.StatusOK {
				t.Fatalf("the good request after the probe: %d %.300s", g.code, g.body)
			}
		})
	}
}

// TestHostileCounts is #16 defect 1: counts whose product wraps around
// passed the image-count check and the process died out of memory.
func TestHostileCounts(t *testing.T) {
	_, ts := newServer(t, Config{})
	const big = "4611686018427387904" // 4 × 2^62 wraps to 0
	runProbes(t, ts, []probe{
		{name: "a1111 wraps to 0", path: "/sdapi/v1/txt2img", body: `{"prompt":"x","steps":2,"batch_size":4,"n_iter":` + big + `}`, code: 400, msg: "images"},
		{name: "a1111 2^32 × 2^32", path: "/sdapi/v1/txt2img", body: `{"prompt":"x","steps":2,"batch_size":4294967296,"n_iter":4294967296}`, code: 400, msg: "images"},
		{name: "a1111 negative × negative", path: "/sdapi/v1/txt2img", body: `{"prompt":"x","steps":2,"batch_size":-2,"n_iter":-4}`, code: 400, msg: "images"},
		{name: "jobs wraps to 0", path: "/v1/jobs", body: `{"prompt":"x","steps":2,"batch_size":4,"n_iter":` + big + `}`, code: 400, msg: "images"},
		{name: "img2img wraps", path: "/sdapi/v1/img2img", body: fmt.Sprintf(`{"init_images":[%q],"batch_size":4294967296,"n_iter":4294967296}`, pngBase64(t, 64, 64)), code: 400, msg: "images"},
		{name: "sagemaker prompts × images", path: "/invocations", body: `{"prompt":["a","b"],"num_images_per_prompt":` + big + `}`, code: 400, msg: "images"},
		{name: "sagemaker huge seed", path: "/invocations", body: `{"prompt":["a","b"],"num_images_per_prompt":2,"seed":9223372036854775807}`, code: 400, msg: "seed"},
		{name: "openai huge n", path: "/v1/images/generations", body: `{"prompt":"x","n":` + big + `}`, code: 400, msg: "n"},
	})
}

// fakeEngine is an Engine whose Submit does what the test says.
type fakeEngine struct {
	submit func(ctx context.Context, r sd.Request) (*sd.Handle, error)
}

func (f fakeEngine) Submit(ctx context.Context, r sd.Request) (*sd.Handle, error) {
	return f.submit(ctx, r)
}

func (fakeEngine) Metrics() sd.Metrics { return sd.Metrics{} }

func (fakeEngine) Defaults() sd.Defaults {
	return sd.Defaults{Width: 64, Height: 64, GuidanceScale: 7.5}
}

func (fakeEngine) LargestSize(sd.Request) (int, int) { return 4096, 4096 }

func (fakeEngine) Check(sd.Request) error { return nil }

// TestInternalErrorHidesPaths is #16 defect 9: a 500 carried the engine's
// error, with absolute model and ONNX Runtime source paths in it. The
// client now gets a reference; the log gets the error.
func TestInternalErrorHidesPaths(t *testing.T) {
	var log testenv.SyncBuffer
	eng := fakeEngine{submit: func(context.Context, sd.Request) (*sd.Handle, error) {
		return nil, errors.New("ort: /home/alice/models/sd15/unet/model.onnx: /onnxruntime_src/onnxruntime/core/session/inference_session.cc:1234 failed")
	}}
	_, ts := newServerOn(t, eng, Config{Logger: slog.New(slog.NewTextHandler(&log, nil))})
	for _, path := range []string{"/sdapi/v1/txt2img", "/v1/images/generations", "/invocations"} {
		r := post(t, ts.URL+path, `{"prompt":"x"}`)
		if r.code != http.StatusInternalServerError {
			t.Fatalf("%s: %d %s", path, r.code, r.body)
		}
		msg, typ, _ := r.apiErr(t)
		if strings.Contains(string(r.body), "/home") || strings.Contains(string(r.body), "onnxruntime_src") || typ != "server_error" {
			t.Errorf("%s: the 500 body leaks paths: %s", path, r.body)
		}
		ref := regexp.MustCompile(`reference ([0-9a-f]+)`).FindStringSubmatch(msg)
		if ref == nil || !strings.Contains(log.String(), "ref="+ref[1]) || !strings.Contains(log.String(), "/home/alice") {
			t.Errorf("%s: message %q: the log lacks its reference and the error:\n%s", path, msg, log.String())
		}
	}
}

// TestAsyncPanicGuarded is #16 defect 9: the async job's goroutine ran
// outside the panic guard, so a panic in a job ended the process.
func TestAsyncPanicGuarded(t *testing.T) {
	eng := fakeEngine{submit: func(context.Context, sd.Request) (*sd.Handle, error) { panic("boom in the engine") }}
	_, ts := newServerOn(t, eng, Config{})
	r := post(t, ts.URL+"/v1/jobs", `{"prompt":"x"}`)
	if r.code != http.StatusAccepted {
		t.Fatalf("submit: %d %s", r.code, r.body)
	}
	var st jobStatus
	r.json(t, &st)
	waitFor(t, "the job to fail", func() bool {
		get(t, ts.URL+"/v1/jobs/"+st.ID).json(t, &st)
		return st.Finished != nil
	})
	if st.Status != stateFailed || !strings.Contains(st.Error, "internal error") || strings.Contains(st.Error, "boom") {
		t.Errorf("job after a panic: %+v", st)
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"x"}`); r.code != http.StatusInternalServerError {
		t.Errorf("sync request after a panic: %d %s", r.code, r.body)
	}
}

// TestJobsExpireOnTimer is #16 defect 9: finished jobs expired only when a
// new job was submitted.
func TestJobsExpireOnTimer(t *testing.T) {
	_, ts := newServer(t, Config{JobTTL: 200 * time.Millisecond})
	r := post(t, ts.URL+"/v1/jobs", `{"prompt":"x","steps":1}`)
	var st jobStatus
	r.json(t, &st)
	waitFor(t, "the job", func() bool {
		get(t, ts.URL+"/v1/jobs/"+st.ID).json(t, &st)
		return st.Finished != nil
	})
	if st.Status != stateDone {
		t.Fatalf("job %+v", st)
	}
	waitFor(t, "the job to expire with nothing else happening", func() bool {
		return get(t, ts.URL+"/v1/jobs/"+st.ID).code == http.StatusNotFound
	})
	if d := time.Since(*st.Finished); d < 200*time.Millisecond {
		t.Errorf("expired %v after finishing, before its TTL", d)
	}
}

// TestWebPageIgnoresURLToken is #16 defect 9: the page took ?token= from
// its URL, where tokens end up in logs, histories and Referer headers.
func TestWebPageIgnoresURLToken(t *testing.T) {
	if regexp.MustCompile(`get\(\s*["']token["']\s*\)`).Match(indexHTML) {
		t.Errorf("the page reads a token from its URL")
	}
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	_, ts := newServer(t, Config{Token: "page-token"})
	dom := string(chromium(t, bin, ts.URL+"/?prompt=x&steps=1&autorun=1&token=page-token", "--dump-dom"))
	if !strings.Contains(dom, `data-state="error"`) || !strings.Contains(dom, "bearer token") {
		st := regexp.MustCompile(`id="status"[^>]*>([^<]*)`).FindStringSubmatch(dom)
		t.Errorf("the page with ?token= in its URL ran (status %q): it must ask for the token instead", st)
	}
}

// TestHostileSmall is the rest of #16 defect 9, and the probes that already
// passed: malformed JSON, wrong types, decompression bombs, bad ids.
func TestHostileSmall(t *testing.T) {
	_, ts := newServer(t, Config{})
	bomb := func(w, h int) string { // a PNG header that declares w×h pixels
		var b bytes.Buffer
		_ = png.Encode(&b, image.NewGray(image.Rect(0, 0, 8, 8)))
		raw := b.Bytes()
		binary.BigEndian.PutUint32(raw[16:], uint32(w))
		binary.BigEndian.PutUint32(raw[20:], uint32(h))
		binary.BigEndian.PutUint32(raw[29:], crc32.ChecksumIEEE(raw[12:29])) // IHDR's CRC
		return base64.StdEncoding.EncodeToString(raw)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte(`{"prompt":"` + strings.Repeat("a", 1<<20) + `"}`))
	_ = zw.Close()
	runProbes(t, ts, []probe{
		{name: "text/plain", path: "/sdapi/v1/txt2img", body: goodRequest, hdr: []string{"Content-Type", "text/plain"}, code: 415, msg: "application/json"},
		{name: "form", path: "/v1/jobs", body: "prompt=x", hdr: []string{"Content-Type", "application/x-www-form-urlencoded"}, code: 415, msg: "application/json"},
		{name: "no content type", path: "/v1/images/generations", body: `{"prompt":"x"}`, hdr: []string{"Content-Type", ""}, code: 415, msg: "Content-Type none"},
		{name: "gzip", path: "/sdapi/v1/txt2img", body: gz.String(), hdr: []string{"Content-Encoding", "gzip"}, code: 415, msg: "uncompressed"},
		{name: "null", path: "/sdapi/v1/txt2img", body: `null`, code: 400, msg: "not null"},
		{name: "null jobs", path: "/v1/jobs", body: ` null `, code: 400, msg: "not null"},
		{name: "null openai", path: "/v1/images/generations", body: `null`, code: 400, msg: "not null"},
		{name: "malformed", path: "/sdapi/v1/txt2img", body: `{"prompt":`, code: 400, msg: "malformed JSON"},
		{name: "two objects", path: "/invocations", body: `{"prompt":"x"}{"prompt":"y"}`, code: 400, msg: "after the object"},
		{name: "string", path: "/v1/jobs", body: `"x"`, code: 400, msg: "JSON object"},
		{name: "wrong type", path: "/sdapi/v1/txt2img", body: `{"prompt":["x"]}`, code: 400, msg: "wrong type"},
		{name: "nested depth", path: "/sdapi/v1/txt2img", body: `{"x":` + strings.Repeat("[", 100000) + strings.Repeat("]", 100000) + `}`, code: 400, msg: "malformed JSON"},
		{name: "png bomb", path: "/sdapi/v1/img2img", body: fmt.Sprintf(`{"init_images":[%q]}`, bomb(100000, 100000)), code: 400, msg: "100000x100000"},
		{name: "png bomb jobs", path: "/v1/jobs", body: fmt.Sprintf(`{"init_images":[%q]}`, bomb(1<<30, 8)), code: 400, msg: "want sides"},
		{name: "404 json", method: "GET", path: "/nope", code: 404, msg: "no such endpoint"},
		{name: "405 json", method: "GET", path: "/sdapi/v1/txt2img", code: 405, msg: "not allowed"},
		{name: "405 delete", method: "DELETE", path: "/v1/images/generations", code: 405, msg: "POST"},
		{name: "unknown job", method: "GET", path: "/v1/jobs/nope", code: 404, msg: "no such job"},
		{name: "long job id", method: "GET", path: "/v1/jobs/" + strings.Repeat("a", 10000), code: 404, msg: "no such job"},
		{name: "nul job id", method: "GET", path: "/v1/jobs/%00", code: 404, msg: "no such job"},
		{name: "dotted job id", method: "GET", path: "/v1/jobs/..%2F..%2Fetc%2Fpasswd/result", code: 404, msg: "no such job"},
		{name: "cancel unknown", method: "DELETE", path: "/v1/jobs/nope", code: 404, msg: "no such job"},
		{name: "bad task id", path: "/sdapi/v1/txt2img", body: `{"force_task_id":"a b"}`, code: 400, msg: "force_task_id"},
	})
	r := get(t, ts.URL+"/sdapi/v1/txt2img")
	if allow := r.header.Get("Allow"); allow != "POST" {
		t.Errorf("405 Allow %q, want POST", allow)
	}
	if typ := r.header.Get("Content-Type"); typ != "application/json" {
		t.Errorf("405 Content-Type %q", typ)
	}
}

// TestHugeHeaders: a header past MaxHeaderBytes gets 431, and the service
// goes on.
func TestHugeHeaders(t *testing.T) {
	s := newUnstarted(t, Config{MaxHeaderBytes: 16 << 10})
	base, _ := serveOn(t, s)
	c := dialRaw(t, base)
	c.send(t, "GET", "/healthz", -1, "", "X-Big", strings.Repeat("a", 64<<10))
	if r := c.response(t, 5*time.Second); r.code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("a 64 KB header: %d, want 431", r.code)
	}
	if g := post(t, base+"/sdapi/v1/txt2img", goodRequest); g.code != http.StatusOK {
		t.Errorf("good request after: %d %s", g.code, g.body)
	}
}

// openLimited opens another instance of the default model with the given
// engine options, for the tests of the engine's limits.
func openLimited(t *testing.T, opts ...sd.Option) *sd.Model {
	t.Helper()
	openModel(t) // skips without ONNX Runtime
	dir, err := models.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	m, err := sd.Open(t.Context(), dir, append([]sd.Option{sd.WithThreads(sd.UNet, 1)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// TestHostileMemory is #16 defect 2: 1024×1024 (the OpenAI SDK's default
// size, and on the web page) took the server to 17.7 GB on the 8 MB
// default model, and the kernel killed it. Now the engine's memory
// admission refuses it with 400 naming the budget and the largest size
// that fits, and the page and /v1/config offer only the sizes admitted.
func TestHostileMemory(t *testing.T) {
	m := openLimited(t, sd.WithMemoryBudget(300<<20))
	fw, fh := m.LargestSize(sd.Request{Width: 1024, Height: 1024})
	if fw == 0 || fw >= 1024 {
		t.Fatalf("largest size %dx%d on 300 MiB", fw, fh)
	}
	_, ts := newServerOn(t, m, Config{MaxSize: 1024})
	fits := fmt.Sprintf("the largest size that fits is %dx%d", fw, fh)
	runProbes(t, ts, []probe{
		{name: "a1111 1024", path: "/sdapi/v1/txt2img", body: `{"prompt":"a","steps":1,"width":1024,"height":1024}`, code: 400, msg: fits},
		{name: "openai default size", path: "/v1/images/generations", body: `{"prompt":"a","size":"1024x1024"}`, code: 400, msg: "300 MiB"},
		{name: "jobs 1024", path: "/v1/jobs", body: `{"prompt":"a","steps":1,"width":1024,"height":1024}`, code: 400, msg: "memory budget"},
		{name: "sagemaker wide", path: "/invocations", body: `{"prompt":"a","num_inference_steps":1,"width":1024,"height":512}`, code: 400, msg: "largest size that fits"},
		{name: "too many images", path: "/sdapi/v1/txt2img", body: fmt.Sprintf(`{"prompt":"a","steps":1,"width":%d,"height":%d,"batch_size":8}`, fw, fh), code: 400, msg: "image(s) of that size fit"},
	})
	var cfg struct {
		MaxSize int `json:"max_size"`
	}
	get(t, ts.URL+"/v1/config").json(t, &cfg)
	if cfg.MaxSize != fw/8*8 {
		t.Errorf("/v1/config max_size %d, want the largest admitted, %d", cfg.MaxSize, fw)
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt":"a","steps":1,"width":%d,"height":%d}`, fw, fh)); r.code != http.StatusOK {
		t.Errorf("the largest size that fits: %d %.300s", r.code, r.body)
	}
	// the default maximum follows the model: twice its 64×64
	_, ts2 := newServerOn(t, m, Config{})
	get(t, ts2.URL+"/v1/config").json(t, &cfg)
	if cfg.MaxSize != 128 {
		t.Errorf("default max_size %d, want 128 for the 64×64 default model", cfg.MaxSize)
	}
	if r := post(t, ts2.URL+"/sdapi/v1/txt2img", `{"prompt":"a","width":1024,"height":1024}`); r.code != 400 || !strings.Contains(string(r.body), "limit of 128 pixels") {
		t.Errorf("1024 on the default maximum: %d %s", r.code, r.body)
	}
}

// TestWebPageSizes: the page offers only the sizes the server admits.
func TestWebPageSizes(t *testing.T) {
	bin := lookTool(t, "chromium", "chromium", "chromium-browser", "google-chrome")
	m := openLimited(t, sd.WithMemoryBudget(300<<20))
	_, ts := newServerOn(t, m, Config{MaxSize: 1024})
	var cfg struct {
		MaxSize int `json:"max_size"`
	}
	get(t, ts.URL+"/v1/config").json(t, &cfg)
	dom := string(chromium(t, bin, ts.URL+"/", "--dump-dom"))
	sel := regexp.MustCompile(`(?s)<select id="width">(.*?)</select>`).FindStringSubmatch(dom)
	if sel == nil {
		t.Fatal("no width select in the page")
	}
	var offered []int
	for _, v := range regexp.MustCompile(`value="(\d+)"`).FindAllStringSubmatch(sel[1], -1) {
		n, _ := strconv.Atoi(v[1])
		if n > 0 {
			offered = append(offered, n)
		}
	}
	if len(offered) == 0 || slices.Max(offered) > cfg.MaxSize {
		t.Errorf("the page offers widths %v; the server admits up to %d", offered, cfg.MaxSize)
	}
}

// TestHostilePrompts is #16 defect 7: "a BREAK " × 1000 took 9.6 s and
// over a GB, and 4,000 nested parentheses gave a 500 "model output is not
// finite". Both are now 400s naming the limit.
func TestHostilePrompts(t *testing.T) {
	m := openLimited(t, sd.WithMaxPromptChunks(8))
	_, ts := newServerOn(t, m, Config{})
	nested := strings.Repeat("(", 4000) + "x" + strings.Repeat(")", 4000)
	runProbes(t, ts, []probe{
		{name: "breaks", path: "/sdapi/v1/txt2img", body: `{"prompt":"` + strings.Repeat("a BREAK ", 1000) + `","steps":1}`, code: 400, msg: "more than the limit of 8"},
		{name: "breaks jobs", path: "/v1/jobs", body: `{"prompt":"` + strings.Repeat("a BREAK ", 1000) + `","steps":1}`, code: 400, msg: "chunks of 75 tokens"},
		{name: "long negative", path: "/invocations", body: `{"prompt":"a","negative_prompt":"` + strings.Repeat("word ", 1000) + `","num_inference_steps":1}`, code: 400, msg: "limit of 8"},
		{name: "nested parentheses", path: "/sdapi/v1/txt2img", body: `{"prompt":"` + nested + `","steps":1}`, code: 400, msg: "outside [-10, 10]"},
		{name: "nested openai", path: "/v1/images/generations", body: `{"prompt":"` + nested + `"}`, code: 400, msg: "weight"},
		{name: "large weight", path: "/sdapi/v1/txt2img", body: `{"prompt":"(x:99)","steps":1}`, code: 400, msg: "weight"},
	})
}
