package sd_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// meanAbsDiff is the mean absolute difference of two images.
func meanAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) || len(a) == 0 {
		return math.Inf(1)
	}
	var s float64
	for i := range a {
		s += math.Abs(float64(a[i]) - float64(b[i]))
	}
	return s / float64(len(a))
}

// stepCacheBound is the largest mean absolute pixel difference (pixels in
// [-1, 1]) interval 3 may cause on the tiny models' 10-step images: their
// random weights make the deep features change more between steps than a
// trained UNet's do. Measured (the test logs them): 0.006–0.012 on the
// reference folder, 0.033–0.035 on the generated one.
const stepCacheBound = 0.06

// TestStepCache opens diffusers' tiny reference folder and a generated
// one with step caching at intervals 1 and 3 beside the plain open: at
// interval 1 (the full model at every step) the images are the plain
// ones within the rewrites' tolerance, which proves the split's full
// model exact; at interval 3 the shallow model runs on cached features,
// so they differ, by less than stepCacheBound; and batched and
// concurrent requests give the same pixels as alone.
func TestStepCache(t *testing.T) {
	testenv.RequireORT(t)
	for name, dir := range map[string]string{
		"reference": testenv.TinyReferenceModel(t),
		"generated": generate(t, "stepcache", modelgen.Tiny(), modelgen.Options{Attention: modelgen.Baddbmm}),
	} {
		t.Run(name, func(t *testing.T) {
			cache := t.TempDir()
			open := func(opts ...Option) *Model {
				t.Helper()
				m, err := Open(t.Context(), dir, append(opts, WithRewriteCache(cache), WithoutVAEEncoder())...)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { m.Close() })
				return m
			}
			reqs := []Request{
				{Prompt: "a lighthouse on a cliff", NegativePrompt: "blurry", Seed: 3},
				{Prompt: "a red fox", Seed: 4, ImagesPerPrompt: 2},
				{Prompt: "a red fox", Seed: 5, GuidanceScale: new(1.0)}, // unguided: one row per image
			}
			for i := range reqs {
				reqs[i].Width, reqs[i].Height, reqs[i].Steps = 64, 64, 10
			}
			gen := func(m *Model, r Request) []float32 {
				t.Helper()
				res, err := m.Generate(t.Context(), r)
				if err != nil {
					t.Fatal(err)
				}
				return res.Pixels.Data().([]float32)
			}
			plain := open()
			one := open(WithStepCache(1, 0))
			three := open(WithStepCache(3, 1))
			if l := three.Load().Rewrites[UNet]; !strings.Contains(l, "step cache: branch 1") {
				t.Errorf("the UNet's load report %q does not name the split", l)
			}
			want := make([][]float32, len(reqs))
			for i, r := range reqs {
				p := gen(plain, r)
				if d := testenv.MaxAbsDiff(p, gen(one, r)); d > 1e-4 {
					t.Errorf("request %d: interval 1 differs from the plain run by %g", i, d)
				}
				want[i] = gen(three, r)
				d, mean := testenv.MaxAbsDiff(p, want[i]), meanAbsDiff(p, want[i])
				t.Logf("request %d: interval 3 against plain: max %.4f, mean %.5f", i, d, mean)
				if d < 1e-4 {
					t.Errorf("request %d: interval 3 changed the image by only %g: is the shallow model used?", i, d)
				}
				if mean > stepCacheBound {
					t.Errorf("request %d: interval 3 changed the image by %g on average, bound %g", i, mean, stepCacheBound)
				}
			}
			for name, opts := range map[string][]Option{
				"batched":    {WithBatching(8, 300*time.Millisecond), WithWorkers(Workers{Encode: 2})},
				"concurrent": {WithWorkers(Workers{Encode: 2, Denoise: 3, Decode: 2})},
			} {
				t.Run(name, func(t *testing.T) {
					checkConcurrent(t, open(append(opts, WithStepCache(3, 1))...), reqs, want)
				})
			}
		})
	}
}

// TestStepCacheOptions refuses invalid intervals and branches.
func TestStepCacheOptions(t *testing.T) {
	for _, c := range [][2]int{{0, 1}, {-1, 1}, {2, -1}} {
		if _, err := Open(t.Context(), t.TempDir(), WithStepCache(c[0], c[1])); err == nil || !strings.Contains(err.Error(), "WithStepCache") {
			t.Errorf("WithStepCache(%d, %d): %v", c[0], c[1], err)
		}
	}
}
