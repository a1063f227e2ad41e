package sd_test

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	. "github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/unet"
)

// TestInt8Reference runs diffusers' reference call (tiny-onnx-sd, see
// ../shared/reference/README.md) with the int8 UNet and checks the image
// against diffusers' own float32 one, within int8Tol; it opens the model
// twice from one cache and checks that the second open calibrates
// nothing and gives the same pixels.
func TestInt8Reference(t *testing.T) {
	testenv.RequireORT(t)
	// the largest per-pixel difference to diffusers' float32 image (pixels
	// in [0, 1]) and the root mean square one allowed
	const maxTol, rmsTol = 0.15, 0.03 // measured: 0.112 and 0.0205
	ref := testenv.LoadTinyReference(t)
	cache := t.TempDir()
	var first []float32
	for i, name := range []string{"calibrated", "cached"} {
		var logs bytes.Buffer
		log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		img, m := referenceImage(t, WithThreads(UNet, 1), WithoutVAEEncoder(), WithInt8(Int8{}),
			WithRewriteCache(cache), WithLogger(log))
		rep := m.Load().Rewrites[UNet]
		if !strings.HasPrefix(rep, "int8: ") || strings.Contains(rep, "conv×0 ") {
			t.Errorf("%s: UNet report %q, want int8 convolutions", name, rep)
		}
		calibrated := strings.Contains(logs.String(), "int8 calibration run")
		if calibrated != (i == 0) {
			t.Errorf("%s: calibration ran: %v", name, calibrated)
		}
		maxd := testenv.MaxAbsDiff(img, ref.ORT.Image)
		rms := rmsDiff(img, ref.ORT.Image)
		t.Logf("%s: %s; image vs diffusers: max |Δ| %.4f, RMS %.4f", name, rep, maxd, rms)
		if maxd > maxTol || rms > rmsTol {
			t.Errorf("%s: int8 image differs from diffusers' by max %.4f, RMS %.4f; want at most %g and %g", name, maxd, rms, maxTol, rmsTol)
		}
		if i == 0 {
			first = img
		} else if d := testenv.MaxAbsDiff(img, first); d != 0 {
			t.Errorf("the cached int8 model's image differs from the first by %g", d)
		}
	}
}

func rmsDiff(a, b []float32) float64 {
	if len(a) != len(b) || len(a) == 0 {
		return math.Inf(1)
	}
	var s float64
	for i := range a {
		d := float64(a[i]) - float64(b[i])
		s += d * d
	}
	return math.Sqrt(s / float64(len(a)))
}

// TestInt8Refusals checks that int8 fails clearly where it cannot apply.
func TestInt8Refusals(t *testing.T) {
	testenv.RequireORT(t)
	t.Run("float16", func(t *testing.T) {
		_, err := OpenFolder(t.Context(), fp16Model(t), WithRewriteCache(t.TempDir()), WithThreads(UNet, 1), WithInt8(Int8{}))
		if !errors.Is(err, unet.ErrInt8) || !strings.Contains(err.Error(), "float16") {
			t.Errorf("float16 UNet with int8: %v, want an error wrapping unet.ErrInt8 that names float16", err)
		}
	})
	t.Run("float16 text encoder", func(t *testing.T) {
		_, err := OpenFolder(t.Context(), fp16Model(t), WithRewriteCache(t.TempDir()), WithThreads(UNet, 1), WithInt8(Int8{TextEncoder: true}))
		if !errors.Is(err, textenc.ErrInt8) || !strings.Contains(err.Error(), "float16") {
			t.Errorf("float16 text encoder with int8: %v, want an error wrapping textenc.ErrInt8 that names float16", err)
		}
	})
	t.Run("matmul only", func(t *testing.T) {
		f, err := OpenFolder(t.Context(), legacyModel(t), WithRewriteCache(t.TempDir()), WithThreads(UNet, 1),
			WithInt8(Int8{MatMulOnly: true}))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if rep := f.Load().Rewrites[UNet]; !strings.HasPrefix(rep, "int8: matmul×") || !strings.Contains(rep, " conv×0 ") {
			t.Errorf("MatMul-only int8: UNet report %q, want MatMuls and no convolution", rep)
		}
	})
	t.Run("bad options", func(t *testing.T) {
		_, err := OpenFolder(t.Context(), legacyModel(t), WithInt8(Int8{Size: 30, Steps: -1}))
		if err == nil || !strings.Contains(err.Error(), "calibration size 30") || !strings.Contains(err.Error(), "steps -1") {
			t.Errorf("bad WithInt8 options: %v", err)
		}
	})
}

// TestInt8CacheFiles checks that the int8 entry keeps its weights as
// int8: its weight file is smaller than the float32 model's.
func TestInt8CacheFiles(t *testing.T) {
	testenv.RequireORT(t)
	cache := t.TempDir()
	referenceImage(t, WithThreads(UNet, 1), WithoutVAEEncoder(), WithInt8(Int8{}), WithRewriteCache(cache))
	ws, err := filepath.Glob(filepath.Join(cache, "built-*", "weights.bin"))
	if err != nil || len(ws) != 1 {
		t.Fatalf("int8 entries in the cache: %v %v, want one", ws, err)
	}
	st, err := os.Stat(ws[0])
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.Stat(filepath.Join(testenv.TinyReferenceModel(t), "unet", "weights.pb"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("int8 weights %d bytes, float32 %d", st.Size(), orig.Size())
	if st.Size() >= orig.Size()*6/10 {
		t.Errorf("int8 weights %d bytes, float32 %d: want well under", st.Size(), orig.Size())
	}
}

// TestInt8StepCache opens the tiny reference folder with int8 and step
// caching together (quantized, then split) beside int8 alone, from one
// cache: at interval 1 (the split's full model at every step) the images
// are int8's own within the rewrites' tolerance, which proves the int8
// split's full model exact; at interval 3 the int8 shallow model runs on
// cached features, so they differ, by less than stepCacheBound; and the
// load report names both.
func TestInt8StepCache(t *testing.T) {
	testenv.RequireORT(t)
	dir := testenv.TinyReferenceModel(t)
	cache := t.TempDir()
	open := func(opts ...Option) *Model {
		t.Helper()
		m, err := Open(t.Context(), dir, append(opts, WithRewriteCache(cache), WithoutVAEEncoder(), WithThreads(UNet, 1), WithInt8(Int8{}))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	gen := func(m *Model, seed int64) []float32 {
		t.Helper()
		res, err := m.Generate(t.Context(), Request{Prompt: "a lighthouse on a cliff", Seed: seed, Width: 64, Height: 64, Steps: 10})
		if err != nil {
			t.Fatal(err)
		}
		return res.Pixels.Data().([]float32)
	}
	plain := open()
	one := open(WithStepCache(1, 0))
	three := open(WithStepCache(3, 0))
	for name, m := range map[string]*Model{"interval 1": one, "interval 3": three} {
		if l := m.Load().Rewrites[UNet]; !strings.HasPrefix(l, "int8: ") || !strings.Contains(l, "step cache: branch ") {
			t.Errorf("%s: the UNet's load report %q does not name int8 and the split", name, l)
		}
	}
	for _, seed := range []int64{1, 2} {
		p := gen(plain, seed)
		if d := testenv.MaxAbsDiff(p, gen(one, seed)); d > 1e-4 {
			t.Errorf("seed %d: int8 at interval 1 differs from int8 alone by %g", seed, d)
		}
		c := gen(three, seed)
		d, mean := testenv.MaxAbsDiff(p, c), meanAbsDiff(p, c)
		t.Logf("seed %d: int8 at interval 3 against int8 alone: max %.4f, mean %.5f", seed, d, mean)
		if d < 1e-4 {
			t.Errorf("seed %d: interval 3 changed the int8 image by only %g: is the shallow model used?", seed, d)
		}
		if mean > stepCacheBound {
			t.Errorf("seed %d: interval 3 changed the int8 image by %g on average, bound %g", seed, mean, stepCacheBound)
		}
	}
}

// TestInt8TextReference runs diffusers' reference call (tiny-onnx-sd)
// with the int8 UNet and the int8 text encoder (Int8.TextEncoder) and
// checks the image against diffusers' float32 one, that the load report
// names the text encoder's quantization, and that with the text encoder
// offloaded (reopened per request) the image is the same.
func TestInt8TextReference(t *testing.T) {
	testenv.RequireORT(t)
	// the largest per-pixel difference to diffusers' float32 image (pixels
	// in [0, 1]) and the root mean square one allowed
	const maxTol, rmsTol = 0.15, 0.03 // measured: 0.0860 and 0.0202 (int8 UNet alone: 0.112 and 0.0205)
	ref := testenv.LoadTinyReference(t)
	opts := []Option{WithThreads(UNet, 1), WithThreads(TextEncoder, 1), WithoutVAEEncoder(),
		WithInt8(Int8{TextEncoder: true}), WithRewriteCache(t.TempDir())}
	img, m := referenceImage(t, opts...)
	reps := m.Load().Rewrites
	if !strings.HasPrefix(reps[TextEncoder], "int8: matmul×30 ") || !strings.HasPrefix(reps[UNet], "int8: ") {
		t.Errorf("load report: text encoder %q, UNet %q: want both int8", reps[TextEncoder], reps[UNet])
	}
	maxd := testenv.MaxAbsDiff(img, ref.ORT.Image)
	rms := rmsDiff(img, ref.ORT.Image)
	t.Logf("%s; image vs diffusers: max |Δ| %.4f, RMS %.4f", reps[TextEncoder], maxd, rms)
	if maxd > maxTol || rms > rmsTol {
		t.Errorf("int8 image differs from diffusers' by max %.4f, RMS %.4f; want at most %g and %g", maxd, rms, maxTol, rmsTol)
	}
	// offloaded, the text encoder is reopened per request: int8 still
	off, m := referenceImage(t, append(opts, WithOffload(Offload{TextEncoders: true}))...)
	if r := m.Load().Rewrites[TextEncoder]; r != reps[TextEncoder] {
		t.Errorf("offloaded: text encoder report %q, want %q", r, reps[TextEncoder])
	}
	if d := testenv.MaxAbsDiff(off, img); d != 0 {
		t.Errorf("with the text encoder offloaded the int8 image differs by %g", d)
	}
}

// TestInt8TextXL quantizes both SDXL text encoders (tiny-sdxl) and checks
// their concatenated penultimate hidden states and pooled embeddings
// against diffusers' float32 ones (relative RMS), and that the load
// report names both quantizations.
func TestInt8TextXL(t *testing.T) {
	testenv.RequireORT(t)
	const relTol = 0.06 // the relative RMS difference allowed; measured: 0.0199 (prompt_embeds), 0.0375 (pooled)
	dir, runs := xlReference(t)
	f, err := OpenFolder(t.Context(), dir, WithThreads(UNet, 1), WithThreads(TextEncoder, 1), WithRewriteCache(t.TempDir()),
		WithInt8(Int8{TextEncoder: true, MatMulOnly: true}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep := f.Load().Rewrites[TextEncoder]
	if !strings.HasPrefix(rep, "int8: matmul×") || !strings.Contains(rep, "text_encoder_2: int8: matmul×") {
		t.Errorf("text encoder report %q, want both encoders int8", rep)
	}
	t.Log(rep)
	enc := f.Components().TextEncoder.(pipeline.PooledEncoder)
	for _, run := range runs {
		ids, want := run.TextInputIDs["prompt"], run.Results.ORT
		h, p, err := enc.EncodePooled(t.Context(), ids.Tokenizer, ids.Tokenizer2, 1)
		if err != nil {
			t.Fatal(err)
		}
		rh, rp := testenv.RelRMS(want.PromptEmbeds, h.Data().([]float32)), testenv.RelRMS(want.PooledPromptEmbeds, p.Data().([]float32))
		t.Logf("%s: relative RMS error prompt_embeds %.4g, pooled %.4g", run.Case, rh, rp)
		if rh > relTol || rp > relTol {
			t.Errorf("%s: int8 prompt embeds differ from diffusers' by %.4g, pooled by %.4g (relative RMS); want at most %g", run.Case, rh, rp, relTol)
		}
	}
}
