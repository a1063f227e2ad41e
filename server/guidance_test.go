package server

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// TestGuidanceDialects checks what each dialect's guidance field gives
// the engine: left out, nil (the model's default); 0 or any value up to
// 1, that value, which the engine runs without guidance (no
// unconditional pass) as diffusers does; above 1, that scale.
func TestGuidanceDialects(t *testing.T) {
	got := make(chan *float64, 1)
	eng := fakeEngine{submit: func(_ context.Context, r sd.Request) (*sd.Handle, error) {
		got <- r.GuidanceScale
		return nil, errors.New("recorded")
	}}
	_, ts := newServerOn(t, eng, Config{})
	show := func(g *float64) string {
		if g == nil {
			return "nil"
		}
		return fmt.Sprint(*g)
	}
	for _, tc := range []struct {
		path, body string
		want       *float64
	}{
		{"/sdapi/v1/txt2img", `{"prompt":"x","steps":2}`, nil},
		{"/sdapi/v1/txt2img", `{"prompt":"x","steps":2,"cfg_scale":0}`, new(0.0)},
		{"/sdapi/v1/txt2img", `{"prompt":"x","steps":2,"cfg_scale":1}`, new(1.0)},
		{"/sdapi/v1/txt2img", `{"prompt":"x","steps":2,"cfg_scale":6.5}`, new(6.5)},
		{"/v1/jobs", `{"prompt":"x","steps":2,"cfg_scale":0}`, new(0.0)},
		{"/invocations", `{"prompt":"x","num_inference_steps":2}`, nil},
		{"/invocations", `{"prompt":"x","num_inference_steps":2,"guidance_scale":0}`, new(0.0)},
		{"/invocations", `{"prompt":"x","num_inference_steps":2,"guidance_scale":0.5}`, new(0.5)},
		{"/v1/images/generations", `{"prompt":"x"}`, nil},
	} {
		r := post(t, ts.URL+tc.path, tc.body)
		select {
		case g := <-got:
			if show(g) != show(tc.want) {
				t.Errorf("%s %s: the engine got guidance %s, want %s", tc.path, tc.body, show(g), show(tc.want))
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s %s: no request reached the engine (%d %.300s)", tc.path, tc.body, r.code, r.body)
		}
	}
}
