package testenv

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/session"
)

// OpenComponent opens dir/component/model.onnx with open (textenc.Open,
// unet.Open, vae.OpenDecoder, vae.OpenEncoder) and o, and closes it when
// the test ends (CloseAtEnd). It skips the test without ONNX Runtime and
// fails it when the component cannot be opened.
func OpenComponent[C interface{ Close() error }](t testing.TB, open func(context.Context, string, session.Options) (C, error), dir, component string, o session.Options) C {
	t.Helper()
	RequireORT(t)
	c, err := open(t.Context(), filepath.Join(dir, component, "model.onnx"), o)
	return CloseAtEnd(t, c, err)
}
