package sd_test

import (
	"errors"
	"image"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
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
	if m.Folder() == nil || m.Pipeline() == nil || m.Metrics().Completed != 1 {
		t.Error("accessors")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := m.Generate(t.Context(), Request{Prompt: "x"}); !errors.Is(err, pipeline.ErrClosed) {
		t.Errorf("Generate after Close = %v, want pipeline.ErrClosed", err)
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
		"no spinning": {WithMode(Throughput), WithSpinning(false)},
		"batching":    {WithBatching(4, 100*time.Millisecond), WithWorkers(Encode, 2)},
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
	_, err := Open(t.Context(), "nowhere", WithWorkers(Denoise, -1), WithBatching(-2, 0), WithMode(Mode(7)), WithDefaultSize(65, 64), WithDefaultGuidance(-2))
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"WithWorkers", "WithBatching", "mode", "WithDefaultSize", "WithDefaultGuidance"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}
