package sd_test

import (
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestXLSamePixelsAloneBatchedConcurrent runs SDXL requests that differ in
// prompt, negative prompt (zeroed when empty), size conditioning and image
// count: each gives the same pixels alone, inside dynamic batches (whose
// rows carry different pooled embeddings and time ids) and among
// concurrent requests on several workers. It also checks that the size
// conditioning reaches the UNet.
func TestXLSamePixelsAloneBatchedConcurrent(t *testing.T) {
	testenv.RequireORT(t)
	dir, _ := xlReference(t)
	reqs := []sd.Request{
		{Prompt: "a lighthouse", NegativePrompt: "blurry"},
		{Prompt: "a lighthouse"}, // zero negative embeddings
		{Prompt: "a red fox", NegativePrompt: "blurry", OriginalWidth: 1024, OriginalHeight: 768, CropTop: 16, CropLeft: 8},
		{Prompt: "a red fox", ImagesPerPrompt: 2},
		{Prompt: "a (red:1.2) fox", NegativePrompt: "dark", TargetWidth: 128, TargetHeight: 128},
	}
	for i := range reqs {
		reqs[i].Width, reqs[i].Height, reqs[i].Steps, reqs[i].Seed = 64, 64, 4, int64(10+i)
		reqs[i].Scheduler = "Euler a"
		reqs[i].GuidanceScale = new(5.0)
	}
	alone, err := sd.Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer alone.Close()
	want := make([][]float32, len(reqs))
	for i, r := range reqs {
		res, err := alone.Generate(t.Context(), r)
		if err != nil {
			t.Fatal(err)
		}
		want[i] = res.Pixels.Data().([]float32)
		if i == 2 && (res.Request.OriginalWidth != 1024 || res.Request.TargetWidth != 64 || res.Request.TargetHeight != 64) {
			t.Errorf("resolved size conditioning %+v, want original 1024x768 and the image's target size", res.Request)
		}
	}
	// the size conditioning reaches the UNet: the same request without it differs
	plain := reqs[2]
	plain.OriginalWidth, plain.OriginalHeight, plain.CropTop, plain.CropLeft = 0, 0, 0, 0
	res, err := alone.Generate(t.Context(), plain)
	if err != nil {
		t.Fatal(err)
	}
	if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), want[2]); d == 0 {
		t.Error("original size and crop change nothing")
	}
	for name, opts := range map[string][]sd.Option{
		"batched":    {sd.WithBatching(8, 300*time.Millisecond), sd.WithWorkers(sd.Workers{Encode: 2})},
		"concurrent": {sd.WithWorkers(sd.Workers{Encode: 2, Denoise: 3, Decode: 2})},
	} {
		t.Run(name, func(t *testing.T) {
			m, err := sd.Open(t.Context(), dir, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			checkConcurrent(t, m, reqs, want)
			if name == "batched" {
				batched := false
				for size := range m.Metrics().BatchSizes {
					batched = batched || size > 4 // request 3 alone has 4 rows
				}
				if !batched {
					t.Errorf("batch sizes %v: no requests shared a UNet call", m.Metrics().BatchSizes)
				}
			}
		})
	}
}
