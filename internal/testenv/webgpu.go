package testenv

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// RequireWebGPUEnv makes RequireWebGPU fail instead of skipping, so that CI
// cannot pass by silently skipping the WebGPU tests.
const RequireWebGPUEnv = "SDPIPE_REQUIRE_WEBGPU"

var webgpu struct {
	once sync.Once
	err  error
}

// RequireWebGPU prepares the process for ONNX Runtime's WebGPU provider and
// skips the test when no WebGPU adapter can be had. Without a GPU driver
// configured, it points Vulkan at SwiftShader (the software driver in
// Debian's chromium package, installed by scripts/setup.sh --webgpu). It
// must run before the process's first WebGPU session.
func RequireWebGPU(t testing.TB) {
	t.Helper()
	RequireORT(t)
	webgpu.once.Do(func() {
		if os.Getenv("VK_ICD_FILENAMES") == "" && os.Getenv("VK_DRIVER_FILES") == "" {
			if _, err := os.Stat(ort.SwiftShaderICD); err == nil {
				os.Setenv("VK_ICD_FILENAMES", ort.SwiftShaderICD)
			}
		}
		if os.Getenv("XDG_RUNTIME_DIR") == "" {
			if d, err := os.MkdirTemp("", "sdpipe-xdg-"); err == nil {
				os.Setenv("XDG_RUNTIME_DIR", d) // Dawn wants a writable runtime dir
			}
		}
		webgpu.err = probeWebGPU()
	})
	if webgpu.err != nil {
		if os.Getenv(RequireWebGPUEnv) != "" {
			t.Fatalf("WebGPU required (%s is set) but unavailable: %v", RequireWebGPUEnv, webgpu.err)
		}
		t.Skipf("WebGPU unavailable (run scripts/setup.sh --webgpu for SwiftShader): %v", webgpu.err)
	}
}

// probeWebGPU opens a one-node model on the WebGPU provider.
func probeWebGPU() error {
	if ort.VulkanLoader() == "" {
		return ort.ErrNoVulkanLoader
	}
	dir, err := os.MkdirTemp("", "sdpipe-probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "add.onnx")
	vi := []onnxpb.ValueInfo{{Name: "x", ElemType: onnxpb.Float, Dims: []onnxpb.Dim{{Value: 1}}}}
	m := &onnxpb.Model{IRVersion: 8, OpsetImports: []onnxpb.OperatorSet{{Version: 13}}, Graph: &onnxpb.Graph{
		Name:   "probe",
		Nodes:  []*onnxpb.Node{{OpType: "Add", Input: []string{"x", "x"}, Output: []string{"y"}}},
		Input:  vi,
		Output: []onnxpb.ValueInfo{{Name: "y", ElemType: onnxpb.Float, Dims: []onnxpb.Dim{{Value: 1}}}},
	}}
	if err := onnxpb.WriteFile(path, m, nil); err != nil {
		return err
	}
	io := []ort.IOInfo{{Name: "x", DType: ort.Float32, Shape: []int64{1}}}
	out := []ort.IOInfo{{Name: "y", DType: ort.Float32, Shape: []int64{1}}}
	s, err := ort.Open(context.Background(), path, io, out, ort.Options{Provider: ort.WebGPU})
	if err != nil {
		var pe *ort.ProviderError
		if errors.As(err, &pe) {
			return pe.Err
		}
		return err
	}
	return s.Close()
}
