package webp

import (
	"bytes"
	"image"
	"image/color"
	"math/rand/v2"
	"testing"

	xwebp "golang.org/x/image/webp"
)

// TestRoundTrip encodes images of several kinds and sizes and decodes
// them with golang.org/x/image/webp, an independent VP8L reader: every
// pixel must come back exactly.
func TestRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	cases := map[string]image.Image{}
	noise := image.NewNRGBA(image.Rect(0, 0, 67, 45))
	for i := range noise.Pix {
		noise.Pix[i] = uint8(r.IntN(256))
		if i%4 == 3 {
			noise.Pix[i] = 255
		}
	}
	cases["noise, opaque"] = noise
	alpha := image.NewNRGBA(image.Rect(0, 0, 33, 17))
	for i := range alpha.Pix {
		alpha.Pix[i] = uint8(r.IntN(256))
	}
	cases["noise with alpha"] = alpha
	grad := image.NewRGBA(image.Rect(5, 7, 5+128, 7+64)) // offset bounds
	for y := 7; y < 71; y++ {
		for x := 5; x < 133; x++ {
			grad.Set(x, y, color.RGBA{uint8(x * 2), uint8(y * 3), uint8(x + y), 255})
		}
	}
	cases["gradient"] = grad
	one := image.NewNRGBA(image.Rect(0, 0, 1, 1))
	one.Pix = []uint8{10, 20, 30, 255}
	cases["1x1"] = one
	flat := image.NewNRGBA(image.Rect(0, 0, 40, 3))
	for i := range flat.Pix {
		flat.Pix[i] = []uint8{200, 100, 50, 255}[i%4]
	}
	cases["one colour"] = flat
	skew := image.NewNRGBA(image.Rect(0, 0, 300, 200)) // a skewed histogram: deep Huffman trees
	for i := 0; i < len(skew.Pix); i += 4 {
		v := uint8(0)
		for r.IntN(2) == 0 && v < 40 {
			v++
		}
		skew.Pix[i], skew.Pix[i+1], skew.Pix[i+2], skew.Pix[i+3] = v, v*3, 255-v, 255
	}
	cases["skewed"] = skew
	for name, img := range cases {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := Encode(&buf, img); err != nil {
				t.Fatal(err)
			}
			got, err := xwebp.Decode(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			b := img.Bounds()
			if got.Bounds().Dx() != b.Dx() || got.Bounds().Dy() != b.Dy() {
				t.Fatalf("bounds %v, want %v", got.Bounds(), b)
			}
			for y := range b.Dy() {
				for x := range b.Dx() {
					w := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y))
					g := color.NRGBAModel.Convert(got.At(got.Bounds().Min.X+x, got.Bounds().Min.Y+y))
					if w != g {
						t.Fatalf("pixel (%d,%d) = %v, want %v", x, y, g, w)
					}
				}
			}
		})
	}
	if err := Encode(&bytes.Buffer{}, image.NewNRGBA(image.Rect(0, 0, MaxSize+1, 1))); err == nil {
		t.Error("a too wide image was encoded")
	}
}
