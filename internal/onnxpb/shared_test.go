package onnxpb

import (
	"os"
	"path/filepath"
	"testing"
)

// sharedDir returns ../shared relative to the module root (or
// $SDPIPE_SHARED), skipping the test when it is absent.
func sharedDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("SDPIPE_SHARED"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("go.mod not found above the test directory; cannot locate ../shared")
		}
		dir = parent
	}
	shared := filepath.Join(dir, "..", "shared")
	if _, err := os.Stat(shared); err != nil {
		t.Skipf("reference data not found at %s (set SDPIPE_SHARED): %v", shared, err)
	}
	return shared
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
