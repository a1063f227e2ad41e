package sd_test

import (
	"bytes"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/sd"
)

func TestPNGParameters(t *testing.T) {
	img := image.NewNRGBA(image.Rect(0, 0, 4, 4))
	img.Set(1, 1, color.NRGBA{255, 0, 0, 255})
	for _, text := range []string{"a red fox\nSteps: 20, Seed: 1", "un café ☕ 猫\nSteps: 1"} {
		var buf bytes.Buffer
		if err := sd.EncodePNG(&buf, img, text); err != nil {
			t.Fatal(err)
		}
		got, err := sd.ReadPNGParameters(bytes.NewReader(buf.Bytes()))
		if err != nil || got != text {
			t.Errorf("ReadPNGParameters = %q, %v; want %q", got, err, text)
		}
		dec, err := png.Decode(bytes.NewReader(buf.Bytes()))
		if err != nil {
			t.Fatalf("the PNG with a text chunk does not decode: %v", err)
		}
		if dec.At(1, 1) != (color.NRGBA{255, 0, 0, 255}) && dec.At(1, 1) != (color.RGBA{255, 0, 0, 255}) {
			t.Errorf("pixel %v", dec.At(1, 1))
		}
	}
}

func TestInfotext(t *testing.T) {
	r := sd.Request{Prompt: "a cat", NegativePrompt: "blurry", Steps: 5, GuidanceScale: new(7.5), Width: 64, Height: 48,
		Scheduler: "DPM++ 2M Karras", Generator: sd.GeneratorTorchCPU, Eta: 0.5}
	want := "a cat\nNegative prompt: blurry\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 8, Size: 64x48, Model: tiny, Eta: 0.5, RNG: torch-cpu, Version: sdpipe"
	if got := sd.Infotext(r, 8, "tiny"); got != want {
		t.Errorf("Infotext =\n%q\nwant\n%q", got, want)
	}
	r = sd.Request{Prompt: "x", Steps: 10, GuidanceScale: new(2.5), Width: 64, Height: 64, Scheduler: "PNDMScheduler",
		Generator: sd.GeneratorNumpy, InitImage: image.NewNRGBA(image.Rect(0, 0, 64, 64)), Strength: 0.6}
	if got := sd.Infotext(r, 1, ""); !strings.Contains(got, "Denoising strength: 0.6") || strings.Contains(got, "Model:") {
		t.Errorf("img2img infotext %q", got)
	}
	if got := sd.Infotext(sd.Request{Scheduler: `a, "b"`}, 1, ""); !strings.Contains(got, `Sampler: "a, \"b\""`) {
		t.Errorf("a value with a comma is not quoted as A1111 does: %q", got)
	}
}

func BenchmarkEncodePNG(b *testing.B) {
	for _, side := range []int{256, 512} {
		b.Run(fmt.Sprintf("%dx%d", side, side), func(b *testing.B) {
			img := image.NewNRGBA(image.Rect(0, 0, side, side))
			for i := range img.Pix {
				img.Pix[i] = uint8(i * 31)
			}
			params := sd.Infotext(sd.Request{Prompt: "a lighthouse at dusk", Steps: 20, GuidanceScale: new(7.5), Width: side, Height: side, Scheduler: "PNDM"}, 1, "bench")
			b.ReportAllocs()
			for b.Loop() {
				if err := sd.EncodePNG(io.Discard, img, params); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
