package sd_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// TestInt8TextMeasured measures the int8 text encoder (Int8.TextEncoder)
// against the float32 one of the model folder $SDPIPE_INT8_TEXT_MEASURE
// (e.g. the SD 1.5-architecture model cmd/sdgen writes): for each of a few
// prompts, the relative RMS error of the hidden states (all 77 tokens) and
// of the EOS token's (what SDXL pools), and both encoders' call times.
// The rewrite cache is $SDPIPE_INT8_CACHE, else a temporary one. It runs
// only when asked: a measurement (BENCHMARKS.md, int8); the bound it
// checks (a relative error below 1, what a zero output would give) only
// catches a broken int8 model.
func TestInt8TextMeasured(t *testing.T) {
	dir := testenv.Measure(t, "SDPIPE_INT8_TEXT_MEASURE", "a model folder to measure the int8 text encoder on it")
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	sig, err := textenc.ReadSignature(filepath.Join(dir, "text_encoder", "model.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	o := session.Options{RewriteCache: os.Getenv("SDPIPE_INT8_CACHE")}
	if o.RewriteCache == "" {
		o.RewriteCache = t.TempDir()
	}
	fp, err := sig.Open(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	q, rep, err := sig.OpenInt8(t.Context(), o, textenc.Int8{})
	if err != nil {
		t.Fatal(errors.Join(err, fp.Close()))
	}
	defer func() { errors.Join(fp.Close(), q.Close()) }()
	t.Logf("int8 open %.1f s: %s (cached %v); check rel RMS %.4g", time.Since(start).Seconds(), rep.Summary, rep.Cached, rep.RelRMS)
	for _, p := range []string{
		"a photograph of a mountain lake at sunrise",
		"a photo of an astronaut riding a horse on mars",
		"portrait of an old man with a beard, detailed, studio lighting",
		"a watercolor painting of a lighthouse at dusk, soft light",
		"red cube",
	} {
		ids := tok.Encode(p)
		enc := func(m *textenc.Model) ([]float32, time.Duration) {
			start := time.Now()
			h, err := m.Encode(t.Context(), ids, 1)
			if err != nil {
				t.Fatal(err)
			}
			return h.Data().([]float32), time.Since(start)
		}
		want, tf := enc(fp)
		got, tq := enc(q)
		hidden := len(want) / len(ids)
		eos := 0
		for i, id := range ids {
			if id == tok.EOS() {
				eos = i
				break
			}
		}
		all, last := testenv.RelRMS(want, got), testenv.RelRMS(want[eos*hidden:(eos+1)*hidden], got[eos*hidden:(eos+1)*hidden])
		t.Logf("%q: relative RMS error: hidden states %.4f, EOS token %.4f; encode %v float32, %v int8", p, all, last,
			tf.Round(time.Millisecond), tq.Round(time.Millisecond))
		if !(all < 1) {
			t.Errorf("%q: int8 hidden states differ from float32's by %g (relative RMS)", p, all)
		}
	}
}
