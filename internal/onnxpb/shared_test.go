package onnxpb

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// sharedDir returns ../shared beside the module root ($SDPIPE_SHARED
// overrides), skipping the test when it is absent.
func sharedDir(t testing.TB) string {
	t.Helper()
	return shareddir.Path(t, "")
}

// tinyModel returns the path of a component model of the reference tiny
// diffusers ONNX folder, skipping when it is absent.
func tinyModel(t testing.TB, component string) string {
	t.Helper()
	p := filepath.Join(sharedDir(t), "reference", "tiny-onnx-sd", "model", component, "model.onnx")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("reference model not found: %v", err)
	}
	return p
}
