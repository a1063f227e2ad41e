package testenv

import (
	"os"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// ReadModel decodes the ONNX file at path (its external data stays where
// it is, referenced), failing the test where it cannot.
func ReadModel(t testing.TB, path string) *onnxpb.Model {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnxpb.Unmarshal(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}
