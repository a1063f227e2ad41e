package onnxpb

import (
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// tinyModel returns the path of a component model of the reference tiny
// diffusers ONNX folder, skipping when it is absent.
func tinyModel(t testing.TB, component string) string {
	t.Helper()
	return shareddir.File(t, "reference/tiny-onnx-sd/model/"+component+"/model.onnx")
}
