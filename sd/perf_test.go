package sd_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// referenceImage generates the reference run's image (see
// ../shared/reference/README.md) with opts.
func referenceImage(t *testing.T, opts ...Option) ([]float32, *Model) {
	t.Helper()
	ref := testenv.LoadTinyReference(t)
	m, err := Open(t.Context(), testenv.TinyReferenceModel(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	res, err := m.Generate(t.Context(), Request{
		Prompt:        ref.Call.Prompt,
		Width:         ref.Call.Width,
		Height:        ref.Call.Height,
		Steps:         ref.Call.Steps,
		GuidanceScale: new(ref.Call.GuidanceScale),
		Latents:       ref.InitialLatents,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res.Pixels.Data().([]float32), m
}

// TestRewritesReference opens the reference folder (its UNet and VAE carry
// the baddbmm artefact) with rewrites on and checks that the image is the
// one generated without them, and diffusers' own, within 1e-4; the default
// set is opened twice, the second time from the cache.
func TestRewritesReference(t *testing.T) {
	testenv.RequireORT(t)
	const tol = 1e-4
	ref := testenv.LoadTinyReference(t)
	plain, _ := referenceImage(t, WithThreads(UNet, 1), WithoutVAEEncoder())
	cache := t.TempDir()
	for _, tc := range []struct {
		name string
		rs   []Rewrite
		want string // prefix of the UNet's and VAE decoder's report
	}{
		{"default", nil, "baddbmm×"},
		{"cached", nil, "baddbmm×"},
		{"baddbmm", []Rewrite{RewriteBaddbmm}, "baddbmm×"},
	} {
		img, m := referenceImage(t, WithThreads(UNet, 1), WithoutVAEEncoder(), WithRewrites(tc.rs...), WithRewriteCache(cache))
		rep := m.Load()
		for _, c := range []Component{UNet, VAEDecoder} {
			if !strings.HasPrefix(rep.Rewrites[c], tc.want) {
				t.Errorf("%s: %s rewrites: %q, want %q…", tc.name, c, rep.Rewrites[c], tc.want)
			}
			if wantMHA := tc.rs == nil || slices.Contains(tc.rs, RewriteMHA); wantMHA != strings.Contains(rep.Rewrites[c], "mha×") {
				t.Errorf("%s: %s rewrites: %q, want mha sites: %v", tc.name, c, rep.Rewrites[c], wantMHA)
			}
		}
		if d := testenv.MaxAbsDiff(img, plain); d > tol {
			t.Errorf("%s: image with rewrites differs from the plain one by %g", tc.name, d)
		}
		if d := testenv.MaxAbsDiff(img, ref.ORT.Image); d > tol {
			t.Errorf("%s: image with rewrites differs from diffusers' by %g", tc.name, d)
		} else {
			t.Logf("%s: %v; image max |Δ| %.2g from plain, %.2g from diffusers; open %v", tc.name, rep.Rewrites,
				testenv.MaxAbsDiff(img, plain), d, rep.Open)
		}
	}
}

// TestRewriteRefused plants a rewritten UNet that changes the outputs in
// the cache and checks that OpenFolder refuses it, says so, and loads the
// original.
func TestRewriteRefused(t *testing.T) {
	testenv.RequireORT(t)
	dir := testenv.TinyReferenceModel(t)
	cache := t.TempDir()
	f, err := OpenFolder(t.Context(), dir, WithRewrites(RewriteBaddbmm), WithRewriteCache(cache), WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// find the UNet's entry and double its attention scales
	entries, _ := filepath.Glob(filepath.Join(cache, "*", "weights.pb"))
	if len(entries) != 1 {
		t.Fatalf("cache entries with weights.pb: %v", entries)
	}
	entry := filepath.Dir(entries[0])
	mod := testenv.ReadModel(t, filepath.Join(entry, "model.onnx"))
	testenv.DoubleAttentionScales(t, mod)
	b, err := onnxpb.Marshal(mod)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(entry, "model.onnx"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	// forget the verification
	if err := os.WriteFile(filepath.Join(entry, "rewrite.json"), []byte(`{"report":{"Sites":{"baddbmm":12}}}`), 0o644); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	f, err = OpenFolder(t.Context(), dir, WithRewrites(RewriteBaddbmm), WithRewriteCache(cache), WithoutVAEEncoder(),
		WithLogger(slog.New(slog.NewTextHandler(&log, nil))))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := f.Load().Rewrites[UNet]; !strings.HasPrefix(got, "refused: outputs differ") {
		t.Errorf("UNet rewrite: %q, want a refusal", got)
	}
	if !strings.Contains(log.String(), "rewritten graph changes the outputs") {
		t.Errorf("no refusal logged:\n%s", log.String())
	}
	if got := f.UNet.File; got != filepath.Join(dir, "unet", "model.onnx") {
		t.Errorf("UNet loaded from %s, want the original", got)
	}
}

// TestWarmup opens the generated model with a warm-up and checks the
// report.
func TestWarmup(t *testing.T) {
	testenv.RequireORT(t)
	f, err := OpenFolder(t.Context(), legacyModel(t), WithWarmup(Warmup{Width: 64, Height: 64, MaxCalls: 3}), WithThreads(UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rep := f.Load()
	for _, c := range []Component{TextEncoder, UNet, VAEDecoder} {
		n := len(rep.WarmupCalls[c])
		if n < 2 || n > 3 || rep.Warmup[c] <= 0 || rep.Open[c] <= 0 {
			t.Errorf("%s: open %v, warm-up %v in %d calls, want 2 or 3 calls", c, rep.Open[c], rep.Warmup[c], n)
		}
		if calls, _ := sessionOf(f, c).Stats(); calls != int64(n) {
			t.Errorf("%s: %d session calls after a warm-up of %d", c, calls, n)
		}
	}
}

func TestPerfOptionsValidation(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  LoadOption
		want string
	}{
		{"unknown rewrite", WithRewrites("nonsense"), "unknown rewrite"},
		{"odd warm-up size", WithWarmup(Warmup{Width: 100, Height: 64}), "multiple of 8"},
		{"negative calls", WithWarmup(Warmup{MaxCalls: -1}), "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := OpenFolder(t.Context(), t.TempDir(), tc.opt)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func sessionOf(f *Folder, c Component) interface{ Stats() (int64, time.Duration) } {
	switch c {
	case TextEncoder:
		return f.TextEncoder
	case UNet:
		return f.UNet
	}
	return f.VAEDecoder
}

// TestRewritesDefaultOn opens the reference model, whose UNet has the
// converter's baddbmm, with no rewrite option and with WithoutRewrites.
func TestRewritesDefaultOn(t *testing.T) {
	testenv.RequireORT(t)
	dir := testenv.TinyReferenceModel(t)
	cache := t.TempDir()
	for name, tc := range map[string]struct {
		opts []LoadOption
		want string // prefix of the UNet's rewrite report; "" none
	}{
		"default":         {nil, "baddbmm×12"},
		"WithoutRewrites": {[]LoadOption{WithoutRewrites()}, ""},
		"baddbmm only":    {[]LoadOption{WithoutRewrites(), WithRewrites(RewriteBaddbmm)}, "baddbmm×12"},
	} {
		t.Run(name, func(t *testing.T) {
			f, err := OpenFolder(t.Context(), dir, append([]LoadOption{WithRewriteCache(cache), WithoutVAEEncoder(), WithThreads(UNet, 1)}, tc.opts...)...)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := f.Load().Rewrites[UNet]
			if !strings.HasPrefix(got, tc.want) || (tc.want == "") != (got == "") {
				t.Errorf("UNet rewrites %q, want %q…", got, tc.want)
			}
			if mha := strings.Contains(got, "mha×"); mha != (name == "default") {
				t.Errorf("UNet rewrites %q: mha sites %v", got, mha)
			}
		})
	}
}
