package sd_test

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestLCMEndToEnd runs a generated latent consistency model (a UNet with
// timestep_cond, the LCM scheduler): its default guidance is the LCM
// pipeline's 8.5, the guidance reaches the UNet as the embedding (another
// scale gives another image) and not as classifier-free guidance (one UNet
// row per image per step), and a request gives the same pixels alone,
// batched with others and among concurrent requests.
func TestLCMEndToEnd(t *testing.T) {
	testenv.RequireORT(t)
	dir := generate(t, "lcm", modelgen.TinyLCM(), modelgen.Options{})
	m, err := sd.Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if g := m.Defaults().GuidanceScale; g != 8.5 {
		t.Errorf("default guidance %v, want the LCM pipeline's 8.5", g)
	}
	reqs := []sd.Request{
		{Prompt: "a red circle", Steps: 4, Seed: 1, Width: 64, Height: 64},
		{Prompt: "a red circle", Steps: 4, Seed: 1, Width: 64, Height: 64, GuidanceScale: new(2.0)},
		{Prompt: "a blue square", Steps: 2, Seed: 2, Width: 64, Height: 64, ImagesPerPrompt: 2},
	}
	want := make([][]float32, len(reqs))
	for i, r := range reqs {
		res, err := m.Generate(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res.Pixels.Data().([]float32)
		if i == 0 {
			if b := m.Metrics().BatchSizes; !maps.Equal(b, map[int]int64{1: 4}) {
				t.Errorf("UNet batch sizes %v for one image of 4 steps, want 4 calls of one row (no classifier-free guidance)", b)
			}
		}
	}
	if testenv.MaxAbsDiff(want[0], want[1]) == 0 {
		t.Error("guidance 2 and 8.5 give the same image: the guidance embedding does not reach the UNet")
	}
	b, err := sd.Open(t.Context(), dir, sd.WithBatching(8, 300*time.Millisecond), sd.WithWorkers(sd.Workers{Encode: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	checkConcurrent(t, b, reqs, want)
	if got := b.Metrics().BatchSizes; len(got) == 1 && got[1] > 0 {
		t.Logf("note: the requests never shared a UNet call (%v)", got)
	}
}

// TestTurboSettings runs SD-Turbo's settings end to end on a generated
// model whose scheduler uses trailing timesteps (as SD-Turbo's and
// SDXL-Turbo's configs do): 1 to 4 steps at guidance 0 (no guidance, one
// UNet row per image), with Euler ancestral, the sampler they ship with.
func TestTurboSettings(t *testing.T) {
	testenv.RequireORT(t)
	cfg := modelgen.Tiny()
	cfg.Scheduler = modelgen.SchedulerConfig{Class: "EulerDiscreteScheduler", Spacing: "trailing"}
	dir := generate(t, "turbo", cfg, modelgen.Options{})
	m, err := sd.Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prev := map[int]int64{}
	for steps := 1; steps <= 4; steps++ {
		var ts []float64
		res, err := m.Generate(t.Context(), sd.Request{Prompt: "a cat", Steps: steps, Seed: 3, Width: 64, Height: 64,
			GuidanceScale: new(0.0), Scheduler: "Euler a", OnStep: func(s sd.Step) { ts = append(ts, s.Timestep) }})
		if err != nil {
			t.Fatalf("%d steps: %v", steps, err)
		}
		if len(res.Images) != 1 {
			t.Fatalf("%d steps: %d images", steps, len(res.Images))
		}
		b := m.Metrics().BatchSizes
		if b[1]-prev[1] != int64(steps) || len(b) != 1 {
			t.Errorf("%d steps: UNet batch sizes %v (before %v), want %d calls of one row", steps, b, prev, steps)
		}
		prev = maps.Clone(b)
		// trailing: round(1000 - k·1000/steps) - 1, from 999 down
		want := make([]float64, steps)
		for k := range want {
			want[k] = float64(int(1000-float64(k)*1000/float64(steps)+0.5) - 1)
		}
		if !slices.Equal(ts, want) {
			t.Errorf("%d steps: timesteps %v, want the trailing %v", steps, ts, want)
		}
	}
}
