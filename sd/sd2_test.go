package sd_test

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestSD2VPredictionEndToEnd runs a generated SD 2.x-shaped model (gelu
// OpenCLIP-style text encoder, linear projections, upcast attention, a
// scheduler_config.json with prediction_type v_prediction, 96-pixel native
// size as SD 2.1's 768 scaled down) with several schedulers: each gives a
// finite image of the native size, and the same request with the
// scheduler config changed to epsilon gives another image, so the
// prediction type read from the folder reaches every scheduler. The
// requests give the same pixels alone and concurrently batched.
func TestSD2VPredictionEndToEnd(t *testing.T) {
	testenv.RequireORT(t)
	dir := generate(t, "sd2", modelgen.TinySD2(), modelgen.Options{})
	cfg, err := os.ReadFile(filepath.Join(dir, "scheduler", "scheduler_config.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(cfg), `"v_prediction"`) {
		t.Fatalf("the generated scheduler config is not v_prediction:\n%s", cfg)
	}
	eps := copyDir(t, dir)
	if err := os.WriteFile(filepath.Join(eps, "scheduler", "scheduler_config.json"), []byte(strings.Replace(string(cfg), `"v_prediction"`, `"epsilon"`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	open := func(dir string, opts ...sd.Option) *sd.Model {
		m, err := sd.Open(t.Context(), dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	v, e := open(dir), open(eps)
	if d := v.Defaults(); d.Width != 96 || d.Height != 96 {
		t.Errorf("default size %dx%d, want the UNet's 96x96", d.Width, d.Height)
	}
	schedulers := []string{"", "Euler", "DPM++ 2M Karras", "Euler a", "UniPC", "Heun"}
	want := make([][]float32, len(schedulers))
	reqs := make([]sd.Request, len(schedulers))
	for i, s := range schedulers {
		r := sd.Request{Prompt: "a red circle", NegativePrompt: "blue", Steps: 4, Seed: 9, Scheduler: s}
		reqs[i] = r
		res, err := v.Generate(t.Context(), r)
		if err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		px := res.Pixels.Data().([]float32)
		for _, x := range px {
			if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
				t.Fatalf("%q: non-finite pixel", s)
			}
		}
		if b := res.Images[0].Bounds(); b.Dx() != 96 || b.Dy() != 96 {
			t.Errorf("%q: image %v", s, b)
		}
		want[i] = px
		re, err := e.Generate(t.Context(), r)
		if err != nil {
			t.Fatalf("%q (epsilon): %v", s, err)
		}
		if testenv.MaxAbsDiff(px, re.Pixels.Data().([]float32)) == 0 {
			t.Errorf("%q: v_prediction and epsilon give the same image", s)
		}
	}
	b := open(dir, sd.WithBatching(8, 300*time.Millisecond), sd.WithWorkers(sd.Workers{Encode: 2}))
	checkConcurrent(t, b, reqs, want)
}
