package models

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestVAERoundTrip passes clean renders of every shape, size and colour
// through the VAE (encoder, then decoder) and judges them with the quality
// test's classifier: the VAE bounds what any generation can score, so its
// losses are measured apart from the UNet's. Colours must survive, and the
// shape of medium and large ones in at least 85% of renders; small shapes
// (7-10 px half-extent, two latent pixels) are logged, not checked: the
// committed VAE blurs most of them into blobs. With SDPIPE_VAE_DUMP set to
// a folder it writes each render whose shape is lost there, beside its
// round trip.
func TestVAERoundTrip(t *testing.T) {
	testenv.RequireORT(t)
	comp := openComponents(t, modelUnderTest(t))
	ctx := t.Context()

	r := rand.New(rand.NewPCG(3, 4))
	sizes := []struct {
		name   string
		lo, hi float64
	}{{"small", 7, 10}, {"medium", 12, 16}, {"large", 19, 24}}
	wrongShape := map[string]int{}
	n, colourWrong, bgWrong, bigWrong := 0, 0, 0, 0
	for _, sz := range sizes {
		for _, s := range shapeNames {
			for ci, c := range palette {
				bi := (ci + 1 + r.IntN(len(palette)-1)) % len(palette)
				rad := sz.lo + r.Float64()*(sz.hi-sz.lo)
				cx := math.Max(rad+1, math.Min(64-rad-1, 12+r.Float64()*40))
				cy := math.Max(rad+1, math.Min(64-rad-1, 12+r.Float64()*40))
				img := render(s, c.rgb, palette[bi].rgb, cx, cy, rad)
				lat, err := comp.VAEEncoder.Encode(ctx, nchw(img))
				if err != nil {
					t.Fatal(err)
				}
				out, err := comp.VAEDecoder.Decode(ctx, lat)
				if err != nil {
					t.Fatal(err)
				}
				rt := fromNCHW(out)
				got := classify(rt)
				if dump := os.Getenv("SDPIPE_VAE_DUMP"); dump != "" && got.shape != s {
					writePNG(t, filepath.Join(dump, fmt.Sprintf("%s-%s-%s-as-%s.png", sz.name, s, c.name, got.shape)), sideBySide(img, rt))
				}
				n++
				if got.color != c.name {
					colourWrong++
				}
				if got.bg != palette[bi].name {
					bgWrong++
				}
				if got.shape != s {
					wrongShape[fmt.Sprintf("%s %s", sz.name, s)]++
					if sz.name != "small" {
						bigWrong++
					}
				}
			}
		}
	}
	shapeWrong := 0
	for k, v := range wrongShape {
		shapeWrong += v
		t.Logf("%s: %d of %d wrong", k, v, len(palette))
	}
	t.Logf("round trip of %d renders: colour wrong %d, background wrong %d, shape wrong %d", n, colourWrong, bgWrong, shapeWrong)
	if colourWrong > 0 || bgWrong > 0 {
		t.Errorf("colour wrong in %d and background in %d of %d round trips", colourWrong, bgWrong, n)
	}
	big := n * 2 / len(sizes)
	if frac := float64(bigWrong) / float64(big); frac > 0.15 {
		t.Errorf("shape wrong in %d of %d medium and large round trips (%.0f%%), want at most 15%%", bigWrong, big, 100*frac)
	}
}

// nchw is img as a [1, 3, h, w] tensor in [-1, 1], as the pipeline feeds
// the VAE encoder.
func nchw(img *image.NRGBA) *tensor.Dense {
	b := img.Bounds()
	h, w := b.Dy(), b.Dx()
	px := make([]float32, 3*h*w)
	for y := range h {
		for x := range w {
			c := img.NRGBAAt(x, y)
			for i, v := range []uint8{c.R, c.G, c.B} {
				px[i*h*w+y*w+x] = float32(v)/127.5 - 1
			}
		}
	}
	return tensor.New(tensor.WithShape(1, 3, h, w), tensor.WithBacking(px))
}

// fromNCHW is the first image of a [n, 3, h, w] tensor in [-1, 1].
func fromNCHW(d *tensor.Dense) *image.NRGBA {
	s := d.Shape()
	h, w := s[2], s[3]
	px := d.Data().([]float32)
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			var c [3]uint8
			for i := range c {
				v := (float64(px[i*h*w+y*w+x]) + 1) * 127.5
				c[i] = uint8(math.Round(math.Max(0, math.Min(255, v))))
			}
			img.SetNRGBA(x, y, color.NRGBA{c[0], c[1], c[2], 255})
		}
	}
	return img
}

func sideBySide(a, b *image.NRGBA) *image.NRGBA {
	w, h := a.Bounds().Dx(), a.Bounds().Dy()
	out := image.NewNRGBA(image.Rect(0, 0, 2*w, h))
	for y := range h {
		for x := range w {
			out.SetNRGBA(x, y, a.NRGBAAt(x, y))
			out.SetNRGBA(w+x, y, b.NRGBAAt(x, y))
		}
	}
	return out
}

func writePNG(t *testing.T, path string, img image.Image) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
