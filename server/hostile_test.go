package server

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
			hdr := p.hdr
			if method == http.MethodPost && p.body != "" && !hasHeader(hdr, "Content-Type") {
				hdr = append([]string{"Content-Type", "application/json"}, hdr...)
			}
			r := do(t, t.Context(), method, ts.URL+p.path, p.body, hdr...)
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

func hasHeader(hdr []string, name string) bool {
	for i := 0; i < len(hdr); i += 2 {
		if strings.EqualFold(hdr[i], name) {
			return true
		}
	}
	return false
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
