package sd_test

import (
	"errors"
	"fmt"
	"image"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

func TestOpenGenerate(t *testing.T) {
	testenv.RequireORT(t)
	m, err := Open(t.Context(), legacyModel(t), WithThreads(UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, err := m.Generate(t.Context(), Request{Prompt: "a red circle", Steps: 4, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	// the generated model's unet/config.json says sample_size 8: 64×64
	if b := res.Images[0].Bounds(); b != image.Rect(0, 0, 64, 64) {
		t.Errorf("default size %v, want 64×64 from unet/config.json", b)
	}
	if !strings.Contains(res.Infotexts[0], "Seed: 3") {
		t.Errorf("infotext %q", res.Infotexts[0])
	}
	if m.Metrics().Completed != 1 || m.Defaults() != (Defaults{Width: 64, Height: 64, GuidanceScale: 7.5}) || m.Load().Open[UNet] <= 0 {
		t.Errorf("accessors: metrics %+v, defaults %+v, load %+v", m.Metrics(), m.Defaults(), m.Load())
	}
	if r := res.Request; r.Width != 64 || r.Steps != 4 || r.Seed != 3 || r.Generator != GeneratorNumpy || r.Scheduler != "PNDMScheduler" || *r.GuidanceScale != 7.5 {
		t.Errorf("resolved request %+v", r)
	}
	_, err = m.Submit(t.Context(), Request{Prompt: "x", Width: 65})
	if re, ok := errors.AsType[*RequestError](err); !ok || re.Field != "Width" || !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Submit(Width 65) = %v, want a *RequestError for Width", err)
	}
	h, err := m.Submit(t.Context(), Request{Prompt: "a blue square", Steps: 3, Seed: -1, Scheduler: "Euler a", Generator: GeneratorTorchCPU})
	if err != nil {
		t.Fatal(err)
	}
	var steps []int
	for ev := range h.Progress() {
		steps = append(steps, ev.Step)
	}
	res, err = h.Wait(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(steps) != "[1 2 3]" || h.Request().Seed != res.Seeds[0] || res.Request.Generator != GeneratorTorchCPU {
		t.Errorf("progress %v, handle seed %d, result seeds %v, generator %v", steps, h.Request().Seed, res.Seeds, res.Request.Generator)
	}
	if again, _ := h.Wait(t.Context()); again != res || !strings.Contains(res.Infotexts[0], "RNG: torch-cpu") {
		t.Errorf("second Wait gave another result, or infotext %q", res.Infotexts[0])
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := m.Generate(t.Context(), Request{Prompt: "x"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Generate after Close = %v, want ErrClosed", err)
	}
}

func TestOpenModesAndBatching(t *testing.T) {
	testenv.RequireORT(t)
	dir := legacyModel(t)
	base, err := Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	for name, opts := range map[string][]Option{
		"throughput":  {WithMode(Throughput)},
		"no spinning": {WithMode(Throughput), WithSessionOptions(UNet, SessionOptions{Spinning: Off})},
		"batching":    {WithBatching(4, 100*time.Millisecond), WithWorkers(Workers{Encode: 2})},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := Open(t.Context(), dir, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var wg sync.WaitGroup
			for i := range 3 {
				wg.Go(func() {
					req := Request{Prompt: "a blue square", Steps: 3, Seed: int64(i), Scheduler: "Euler"}
					got, err := m.Generate(t.Context(), req)
					if err != nil {
						t.Error(err)
						return
					}
					want, err := base.Generate(t.Context(), req)
					if err != nil {
						t.Error(err)
						return
					}
					if d := testenv.MaxAbsDiff(got.Pixels.Data().([]float32), want.Pixels.Data().([]float32)); d > 1e-5 {
						t.Errorf("request %d differs by %g from the latency-mode run", i, d)
					}
				})
			}
			wg.Wait()
		})
	}
}

func TestOpenRejectsBadEngineOptions(t *testing.T) {
	_, err := Open(t.Context(), "nowhere", WithWorkers(Workers{Denoise: -1}), WithBatching(-2, 0), WithMode(Mode(7)),
		WithDefaults(Defaults{Width: 65, Height: 64, GuidanceScale: -2}), WithDevice(Component(5), CPU))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"WithWorkers", "WithBatching", "WithMode", "WithDefaults: size", "WithDefaults: GuidanceScale", "unknown component 5"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
