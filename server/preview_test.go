package server

import (
	"image"
	"net/http"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/sd"
)

// kinks is the fraction of pixels (green channel) where the image is not
// locally linear along rows: the cheap latent-resolution preview scaled up
// bilinearly is linear between its samples, a TAESD decode is not.
func kinks(img image.Image) float64 {
	b := img.Bounds()
	n, k := 0, 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X + 1; x < b.Max.X-1; x++ {
			g := func(x int) int { _, g, _, _ := img.At(x, y).RGBA(); return int(g >> 8) }
			d := g(x+1) - 2*g(x) + g(x-1)
			if d > 2 || d < -2 {
				k++
			}
			n++
		}
	}
	return float64(k) / float64(n)
}

// TestProgressTAESDPreview: with sd.WithTAESD the A1111 progress
// endpoint's current_image and the job status's preview are TAESD's
// full-size decodes, not the scaled-up latent map.
func TestProgressTAESDPreview(t *testing.T) {
	taesd := t.TempDir()
	if err := modelgen.WriteTAESD(taesd, modelgen.TinyTAESD(), modelgen.Options{Seed: 3}); err != nil {
		t.Fatal(err)
	}
	for _, withTAESD := range []bool{false, true} {
		opts := []sd.Option{}
		if withTAESD {
			opts = append(opts, sd.WithTAESD(taesd), sd.WithPreviewEvery(1))
		}
		m := openLimited(t, opts...)
		_, ts := newServerOn(t, m, Config{})
		done := make(chan response, 1)
		go func() {
			done <- post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"long","steps":900,"seed":1,"force_task_id":"task(p)"}`)
		}()
		var p struct {
			CurrentImage *string `json:"current_image"`
			State        struct {
				SamplingStep int `json:"sampling_step"`
			}
		}
		waitFor(t, "a preview", func() bool {
			get(t, ts.URL+"/sdapi/v1/progress?id_task=task(p)").json(t, &p)
			return p.CurrentImage != nil && p.State.SamplingStep >= 5
		})
		img, _ := decodePNG(t, *p.CurrentImage)
		if k := kinks(img); (k > 0.4) != withTAESD {
			t.Errorf("TAESD %v: %.2f of the preview's pixels off a bilinear line, want %s 0.4 (cheap map 0.18, TAESD 0.66 when written)", withTAESD, k, map[bool]string{false: "≤", true: ">"}[withTAESD])
		}
		if img.Bounds() != image.Rect(0, 0, 64, 64) {
			t.Errorf("preview %v, want the image size", img.Bounds())
		}
		post(t, ts.URL+"/sdapi/v1/interrupt", `{"id_task":"task(p)"}`)
		if r := <-done; r.code != http.StatusOK {
			t.Errorf("interrupted: %d", r.code)
		}
		if !withTAESD {
			continue
		}
		// the web page's preview: the job status with ?preview=true
		var job struct{ ID string }
		r := post(t, ts.URL+"/v1/jobs", `{"prompt":"long","steps":900,"seed":2}`)
		r.json(t, &job)
		var st struct {
			Progress     struct{ Step int }
			CurrentImage *string `json:"current_image"`
		}
		waitFor(t, "a job preview", func() bool {
			get(t, ts.URL+"/v1/jobs/"+job.ID+"?preview=true").json(t, &st)
			return st.CurrentImage != nil && st.Progress.Step >= 5
		})
		if img, _ := decodePNG(t, *st.CurrentImage); kinks(img) <= 0.4 {
			t.Errorf("job preview: %.2f of its pixels off a bilinear line, want a TAESD decode", kinks(img))
		}
		st.CurrentImage = nil
		get(t, ts.URL+"/v1/jobs/"+job.ID).json(t, &st)
		if st.CurrentImage != nil {
			t.Error("the job status has a preview without ?preview=true")
		}
		post(t, ts.URL+"/v1/jobs/"+job.ID+"/cancel", "")
	}
}
