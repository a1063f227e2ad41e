package onnxpb

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// tinyModel returns the path of a component model of the reference tiny
// diffusers ONNX folder, skipping when it is absent.
func tinyModel(t testing.TB, component string) string {
	t.Helper()
	p := filepath.Join(shareddir.Path(t, ""), "reference", "tiny-onnx-sd", "model", component, "model.onnx")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("reference model not found: %v", err)
	}
	return p
}
