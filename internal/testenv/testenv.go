// Package testenv finds what the project's tests need outside the module:
// the read-only reference data in ../shared and the ONNX Runtime library.
// Tests that cannot find them skip with a message that says how to get them.
package testenv

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// ModuleRoot returns the directory holding go.mod, walking up from the
// working directory, or "" when there is none.
func ModuleRoot() string { return shareddir.ModuleRoot() }

// SharedDir returns ../shared beside the module root ($SDPIPE_SHARED
// overrides), or skips the test when it (or its reference/ folder) is
// absent.
func SharedDir(t testing.TB) string {
	t.Helper()
	return shareddir.Path(t, "reference")
}

// TinyReferenceModel returns ../shared/reference/tiny-onnx-sd/model, or
// skips.
func TinyReferenceModel(t testing.TB) string {
	t.Helper()
	return filepath.Join(SharedDir(t), "reference", "tiny-onnx-sd", "model")
}

// RequireORT skips the test when the ONNX Runtime library cannot be found by
// the default lookup, and returns its version otherwise.
func RequireORT(t testing.TB) string {
	t.Helper()
	v, _, err := ort.Version("")
	if errors.Is(err, ort.ErrLibraryNotFound) {
		t.Skipf("ONNX Runtime not installed (run scripts/setup.sh): %v", err)
	}
	if err != nil {
		t.Fatalf("loading ONNX Runtime: %v", err)
	}
	return v
}

// CloseAtEnd returns c, which the call that opened it returned with err,
// and closes it when the test ends, reporting its Close error; it fails the
// test on err.
func CloseAtEnd[C interface{ Close() error }](t testing.TB, c C, err error) C {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}
