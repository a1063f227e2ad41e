package textenc_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
)

// TestOpenInt8 quantizes the tiny reference text encoder and checks its
// hidden states against diffusers' float32 ones, that the second open
// comes from the cache with the same figures, that reopening the Model's
// Signature loads the int8 model again, and that int8 without a cache is
// refused.
func TestOpenInt8(t *testing.T) {
	testenv.RequireORT(t)
	// the relative RMS difference to diffusers' hidden states allowed
	const relTol = 0.04 // measured: 0.0153
	ref := testenv.LoadTinyReference(t)
	path := filepath.Join(testenv.TinyReferenceModel(t), "text_encoder", "model.onnx")
	sig, err := textenc.ReadSignature(path)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int32
	var want []float32
	for _, c := range ref.ORT.TextEncoderCalls {
		ids = append(ids, c.InputIDs...)
		want = append(want, c.LastHiddenState...)
	}
	o := session.Options{Threads: 1, RewriteCache: t.TempDir()}
	var first textenc.Int8Report
	for i := range 2 {
		m, rep, err := sig.OpenInt8(t.Context(), o, textenc.Int8{})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (cached %v): check rel RMS %.4g, max |Δ| %.4g", rep.Summary, rep.Cached, rep.RelRMS, rep.MaxAbs)
		if !strings.HasPrefix(rep.Summary, "int8: matmul×30 ") || m.Loaded.Rewrites != rep.Summary {
			t.Errorf("report %q, load report %q: want the 30 weight MatMuls quantized", rep.Summary, m.Loaded.Rewrites)
		}
		if rep.Cached != (i == 1) {
			t.Errorf("open %d: cached %v", i, rep.Cached)
		}
		if i == 0 {
			first = rep
		} else if rep.RelRMS != first.RelRMS || rep.MaxAbs != first.MaxAbs {
			t.Errorf("cached check figures %g %g, first %g %g", rep.RelRMS, rep.MaxAbs, first.RelRMS, first.MaxAbs)
		}
		got, err := m.Encode(t.Context(), ids, len(ref.ORT.TextEncoderCalls))
		if err != nil {
			t.Fatal(err)
		}
		rel := testenv.RelRMS(want, got.Data().([]float32))
		t.Logf("hidden states vs diffusers: relative RMS %.4g", rel)
		if rel > relTol {
			t.Errorf("int8 hidden states differ from diffusers' by %.4g (relative RMS), want at most %g", rel, relTol)
		}
		again, err := m.Signature.Open(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		if again.Loaded.Rewrites != rep.Summary || again.Loaded.File != m.Loaded.File {
			t.Errorf("reopened: %+v, want the int8 model %+v", again.Loaded, m.Loaded)
		}
		if err := errors.Join(again.Close(), m.Close()); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := sig.OpenInt8(t.Context(), session.Options{Threads: 1}, textenc.Int8{}); !errors.Is(err, textenc.ErrInt8) {
		t.Errorf("int8 without a rewrite cache: %v, want ErrInt8", err)
	}
	if _, _, err := sig.OpenInt8(t.Context(), o, textenc.Int8{MaxRelError: 1e-9}); !errors.Is(err, textenc.ErrInt8) || !strings.Contains(err.Error(), "relative RMS") {
		t.Errorf("int8 with a bound it cannot meet: %v, want ErrInt8 naming the relative RMS", err)
	}
}
