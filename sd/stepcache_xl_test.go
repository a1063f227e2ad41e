package sd_test

import (
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// TestStepCacheXL runs step caching on the tiny SDXL folder, whose UNet
// takes the added conditioning: interval 1 gives the plain image within
// the rewrites' tolerance, and interval 2 a different one.
func TestStepCacheXL(t *testing.T) {
	testenv.RequireORT(t)
	dir, _ := xlReference(t)
	cache := t.TempDir()
	r := Request{Prompt: "a lighthouse", NegativePrompt: "blurry", Width: 64, Height: 64, Steps: 6, Seed: 7, GuidanceScale: new(5.0)}
	var imgs [][]float32
	for _, opts := range [][]Option{nil, {WithStepCache(1, 1)}, {WithStepCache(2, 1)}} {
		m, err := Open(t.Context(), dir, append(opts, WithRewriteCache(cache))...)
		if err != nil {
			t.Fatal(err)
		}
		res, err := m.Generate(t.Context(), r)
		m.Close()
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, res.Pixels.Data().([]float32))
	}
	if d := testenv.MaxAbsDiff(imgs[0], imgs[1]); d > 1e-4 {
		t.Errorf("interval 1 differs from the plain image by %g", d)
	}
	if d := testenv.MaxAbsDiff(imgs[0], imgs[2]); d < 1e-4 {
		t.Errorf("interval 2 changed the image by only %g", d)
	}
	t.Logf("interval 2 against plain: max %.4f, mean %.5f", testenv.MaxAbsDiff(imgs[0], imgs[2]), meanAbsDiff(imgs[0], imgs[2]))
}
