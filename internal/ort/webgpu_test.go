package ort_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// runBoth runs the model at path on the CPU and on WebGPU with the same
// inputs and returns the largest difference of the first output.
func runBoth(t *testing.T, path string, in []ort.Tensor, outShape []int64) float64 {
	t.Helper()
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	var res [2][]float32
	for i, p := range []ort.Provider{ort.CPU, ort.WebGPU} {
		s, err := ort.Open(t.Context(), path, ins, outs[:1], ort.Options{Provider: p})
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		out := []ort.Tensor{{Shape: outShape}}
		err = s.Run(t.Context(), in, out)
		if cerr := s.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		res[i] = out[0].Data.([]float32)
	}
	return testenv.MaxAbsDiff(res[0], res[1])
}

// TestWebGPUComponentsMatchCPU runs each component of the reference model
// (and a generated VAE encoder, whose output is deterministic) on WebGPU.
func TestWebGPUComponentsMatchCPU(t *testing.T) {
	testenv.RequireWebGPU(t)
	ref := testenv.LoadTinyReference(t)
	dir := testenv.TinyReferenceModel(t)
	gen := t.TempDir()
	if err := modelgen.Write(gen, modelgen.Tiny(), modelgen.Options{}); err != nil {
		t.Fatal(err)
	}
	cond := ref.ORT.TextEncoderCalls[0].LastHiddenState
	st := ref.ORT.Steps[3]
	img := make([]float32, 3*64*64)
	for i := range img {
		img[i] = float32(i%13)/6 - 1
	}
	tests := []struct {
		name  string
		path  string
		in    []ort.Tensor
		shape []int64
	}{
		{"text_encoder", filepath.Join(dir, "text_encoder", "model.onnx"),
			[]ort.Tensor{{Shape: []int64{1, 77}, Data: ref.ORT.TextEncoderCalls[0].InputIDs}}, []int64{1, 77, 32}},
		{"unet", filepath.Join(dir, "unet", "model.onnx"), []ort.Tensor{
			{Shape: []int64{2, 4, 8, 8}, Data: st.SampleInput},
			{Shape: []int64{2}, Data: []float32{st.TimestepInput[0], st.TimestepInput[0]}},
			{Shape: []int64{2, 77, 32}, Data: append(append([]float32(nil), cond...), cond...)},
		}, []int64{2, 4, 8, 8}},
		{"vae_decoder", filepath.Join(dir, "vae_decoder", "model.onnx"),
			[]ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: ref.ORT.VAEDecoderInput}}, []int64{1, 3, 64, 64}},
		{"vae_encoder (generated)", filepath.Join(gen, "vae_encoder", "model.onnx"),
			[]ort.Tensor{{Shape: []int64{1, 3, 64, 64}, Data: img}}, []int64{1, 4, 8, 8}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := runBoth(t, tc.path, tc.in, tc.shape); d > 1e-4 {
				t.Errorf("WebGPU differs from CPU by %g", d)
			} else {
				t.Logf("max |WebGPU - CPU| = %.2g", d)
			}
		})
	}
}

// TestWebGPUNoAdapter runs itself in a child process whose Vulkan sees no
// driver: opening a WebGPU session must fail with ErrNoAdapter, no crash.
func TestWebGPUNoAdapter(t *testing.T) {
	if os.Getenv("SDPIPE_WEBGPU_CHILD") == "1" {
		testenv.RequireORT(t)
		path := filepath.Join(t.TempDir(), "m")
		if err := modelgen.Write(path, modelgen.Tiny(), modelgen.Options{}); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(path, "vae_decoder", "model.onnx")
		ins, outs, _ := ort.ReadIO(p)
		_, err := ort.Open(context.Background(), p, ins, outs, ort.Options{Provider: ort.WebGPU})
		var pe *ort.ProviderError
		if !errors.As(err, &pe) || !errors.Is(err, ort.ErrNoAdapter) {
			t.Fatalf("Open(webgpu, no driver) = %v, want a ProviderError wrapping ErrNoAdapter", err)
		}
		return
	}
	testenv.RequireORT(t)
	if ort.VulkanLoader() == "" {
		t.Skip("no Vulkan loader: this test checks the no-adapter path, which needs one")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestWebGPUNoAdapter$", "-test.v")
	cmd.Env = append(os.Environ(), "SDPIPE_WEBGPU_CHILD=1", "VK_ICD_FILENAMES="+filepath.Join(t.TempDir(), "none.json"),
		"VK_DRIVER_FILES="+filepath.Join(t.TempDir(), "none.json"), "XDG_RUNTIME_DIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestWebGPUNoAdapter") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
