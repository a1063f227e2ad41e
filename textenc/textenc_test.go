package textenc_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
)

func TestEncodeMatchesReference(t *testing.T) {
	ref := testenv.LoadTinyReference(t)
	m := testenv.OpenReference(t, textenc.Open, "text_encoder")
	if m.HiddenSize() != 32 {
		t.Errorf("HiddenSize() = %d, want 32", m.HiddenSize())
	}
	calls := ref.ORT.TextEncoderCalls
	var ids []int32
	var want []float32
	for _, c := range calls {
		ids = append(ids, c.InputIDs...)
		want = append(want, c.LastHiddenState...)
	}
	got, err := m.Encode(t.Context(), ids, len(calls))
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Shape(); s[0] != len(calls) || s[1] != 77 || s[2] != 32 {
		t.Errorf("shape %v", s)
	}
	if d := testenv.MaxAbsDiff(got.Data().([]float32), want); d > 1e-4 {
		t.Errorf("batched hidden states differ from the reference by %g", d)
	}
	if _, err := m.Encode(t.Context(), ids[:10], 3); !errors.Is(err, textenc.ErrInput) {
		t.Errorf("Encode(10 ids, batch 3) = %v, want ErrInput", err)
	}
}

func TestOpenRejectsOtherModels(t *testing.T) {
	testenv.RequireORT(t)
	_, err := textenc.Open(t.Context(), filepath.Join(testenv.TinyReferenceModel(t), "vae_decoder", "model.onnx"), session.Options{})
	var se *session.SignatureError
	if !errors.As(err, &se) {
		t.Errorf("Open(vae decoder) = %v, want a SignatureError", err)
	}
}
