package sd_test

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestWebGPUTxt2Img runs a short txt2img with every model on WebGPU, and
// with the text encoder on the CPU and the rest on WebGPU (the placement
// the engine's overlap is for): both give the all-CPU image within 1e-4.
func TestWebGPUTxt2Img(t *testing.T) {
	testenv.RequireWebGPU(t)
	dir := legacyModel(t)
	req := sd.Request{Prompt: "a red circle", Steps: 2, Seed: 11, Scheduler: "Euler"}
	generate := func(opts ...sd.Option) *sd.Result {
		t.Helper()
		m, err := sd.Open(t.Context(), dir, append(opts, sd.WithoutVAEEncoder())...)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		res, err := m.Generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	cpu := generate()
	for name, opts := range map[string][]sd.Option{
		"all webgpu": {sd.WithDevice(sd.TextEncoder, sd.WebGPU), sd.WithDevice(sd.UNet, sd.WebGPU), sd.WithDevice(sd.VAEDecoder, sd.WebGPU)},
		"mixed":      {sd.WithDevice(sd.TextEncoder, sd.CPU), sd.WithDevice(sd.UNet, sd.WebGPU), sd.WithDevice(sd.VAEDecoder, sd.Auto)},
	} {
		t.Run(name, func(t *testing.T) {
			gpu := generate(opts...)
			d := testenv.MaxAbsDiff(gpu.Pixels.Data().([]float32), cpu.Pixels.Data().([]float32))
			if d > 1e-4 {
				t.Errorf("image on WebGPU differs from the CPU's by %g", d)
			}
			t.Logf("max |WebGPU - CPU| = %.2g", d)
		})
	}
}

// TestWebGPUCancel cancels a request during WebGPU calls; the next request
// then runs to completion.
func TestWebGPUCancel(t *testing.T) {
	testenv.RequireWebGPU(t)
	m, err := sd.Open(t.Context(), legacyModel(t), sd.WithDevice(sd.UNet, sd.WebGPU), sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	h, err := m.Submit(ctx, sd.Request{Prompt: "a long one", Steps: 50, Seed: 1, Scheduler: "Euler"})
	if err != nil {
		t.Fatal(err)
	}
	<-h.Progress() // one UNet call done: the next is in flight
	cancel()
	if _, err := h.Wait(t.Context()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait() = %v, want context.Canceled", err)
	}
	if _, err := m.Generate(t.Context(), sd.Request{Prompt: "a blue square", Steps: 2, Seed: 2, Scheduler: "Euler"}); err != nil {
		t.Fatalf("the request after a canceled one: %v", err)
	}
}

// TestWebGPUFloat16 runs a float16 model's UNet on WebGPU. A device without
// float16 shaders (SwiftShader has none) must refuse it with a clear error.
func TestWebGPUFloat16(t *testing.T) {
	testenv.RequireWebGPU(t)
	m, err := sd.Open(t.Context(), fp16Model(t), sd.WithDevice(sd.UNet, sd.WebGPU), sd.WithoutVAEEncoder())
	if errors.Is(err, ort.ErrRejected) && strings.Contains(err.Error(), "float16") {
		t.Skipf("this WebGPU device has no float16 shaders, and says so: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	res, err := m.Generate(t.Context(), sd.Request{Prompt: "a blue square", Steps: 2, Seed: 2, Scheduler: "Euler"})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range res.Pixels.Data().([]float32) {
		if math.IsNaN(float64(v)) {
			t.Fatal("NaN pixel from the float16 model on WebGPU")
		}
	}
}

// TestAutoFallsBack runs itself in a child process whose Vulkan has no
// driver: sd.Auto must fall back to the CPU with a warning, and sd.WebGPU
// must fail with a clear error.
func TestAutoFallsBack(t *testing.T) {
	if os.Getenv("SDPIPE_AUTO_CHILD") == "1" {
		dir := os.Getenv("SDPIPE_AUTO_MODEL")
		var log strings.Builder
		m, err := sd.Open(t.Context(), dir, sd.WithDevice(sd.UNet, sd.Auto), sd.WithLogger(newTextLogger(&log)))
		if err != nil {
			t.Fatalf("Open(auto) = %v, want a CPU fallback", err)
		}
		m.Close()
		if !strings.Contains(log.String(), "running on the CPU") {
			t.Errorf("no fallback warning in the log: %s", log.String())
		}
		_, err = sd.Open(t.Context(), dir, sd.WithDevice(sd.UNet, sd.WebGPU))
		if err == nil || !strings.Contains(err.Error(), "Vulkan") {
			t.Errorf("Open(webgpu) with no driver = %v, want an error that names the missing Vulkan driver", err)
		}
		return
	}
	testenv.RequireORT(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestAutoFallsBack$", "-test.v")
	none := filepath.Join(t.TempDir(), "none.json")
	cmd.Env = append(os.Environ(), "SDPIPE_AUTO_CHILD=1", "SDPIPE_AUTO_MODEL="+legacyModel(t),
		"VK_ICD_FILENAMES="+none, "VK_DRIVER_FILES="+none, "XDG_RUNTIME_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestAutoFallsBack") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func newTextLogger(w *strings.Builder) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, nil))
}
