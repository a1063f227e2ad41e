package sd_test

import (
	"errors"
	"image"
	"image/color"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	. "github.com/sdpipe/sdpipe/sd"
)

// tinyInpaint returns ../shared/reference/tiny-inpaint: its model folder,
// init image and mask, or skips.
func tinyInpaint(t *testing.T) (dir string, img, mask image.Image) {
	t.Helper()
	root, img, mask := testenv.TinyInpaint(t)
	return filepath.Join(root, "model"), img, mask
}

// TestInpaintModel opens the legacy 9-channel inpainting folder (its
// channel count is symbolic in the graph, read from conv_in.weight) and
// runs a masked request, a request without a mask (txt2img) and
// img2img on it: today's failure was "sample has 4 channels, model wants
// 9" on every request.
func TestInpaintModel(t *testing.T) {
	dir, img, mask := tinyInpaint(t)
	testenv.RequireORT(t)
	m, err := Open(t.Context(), dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, r := range []Request{
		{Prompt: "a red sofa", Steps: 3, Seed: 1, InitImage: img, Mask: mask},
		{Prompt: "a red sofa", Steps: 3, Seed: 1, InitImage: img, Mask: mask, Strength: 0.5},
		{Prompt: "a red sofa", Steps: 3, Seed: 1, Width: 64, Height: 64},
		{Prompt: "a red sofa", Steps: 3, Seed: 1, InitImage: img},
	} {
		res, err := m.Generate(t.Context(), r)
		if err != nil {
			t.Fatalf("mask %v, init image %v, strength %v: %v", r.Mask != nil, r.InitImage != nil, r.Strength, err)
		}
		if b := res.Images[0].Bounds(); b.Dx() != 64 || b.Dy() != 64 {
			t.Errorf("image is %v", b)
		}
	}
	if _, err := m.Generate(t.Context(), Request{Prompt: "x", Steps: 1, Mask: mask}); err == nil {
		t.Error("a mask without an init image was accepted")
	}
	small := image.NewGray(image.Rect(0, 0, 32, 32))
	small.Set(0, 0, color.White)
	if _, err := m.Generate(t.Context(), Request{Prompt: "x", Steps: 1, InitImage: img, Mask: small}); err == nil {
		t.Error("a mask of another size was accepted")
	}
}

// testImages returns a w×h init image and a mask repainting the rectangle r.
func testImages(w, h int, r image.Rectangle) (*image.NRGBA, *image.Gray) {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for y := range h {
		for x := range w {
			img.SetNRGBA(x, y, color.NRGBA{uint8(4 * x), uint8(4 * y), uint8(2 * (x + y)), 255})
		}
	}
	mask := image.NewGray(img.Rect)
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			mask.SetGray(x, y, color.Gray{255})
		}
	}
	return img, mask
}

// regionDiff returns the largest 8-bit difference of a and b inside r and
// outside it.
func regionDiff(a, b image.Image, r image.Rectangle) (in, out int) {
	bb := a.Bounds()
	for y := bb.Min.Y; y < bb.Max.Y; y++ {
		for x := bb.Min.X; x < bb.Max.X; x++ {
			ca, cb := color.NRGBAModel.Convert(a.At(x, y)).(color.NRGBA), color.NRGBAModel.Convert(b.At(x, y)).(color.NRGBA)
			d := 0
			for _, p := range [][2]uint8{{ca.R, cb.R}, {ca.G, cb.G}, {ca.B, cb.B}} {
				d = max(d, abs(int(p[0])-int(p[1])))
			}
			if (image.Point{x, y}).In(r) {
				in = max(in, d)
			} else {
				out = max(out, d)
			}
		}
	}
	return in, out
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

// TestMaskedImg2Img runs masks on the 4-channel tiny model with
// AUTOMATIC1111's options: the pixels outside the mask are the init
// image's (the overlay; the latents there are blended back every step),
// those inside change; inverted, the other way round; blurred, the pixels
// beyond the blur's reach stay; "only masked" returns the init image's
// size with everything outside the padded crop untouched; every fill runs.
func TestMaskedImg2Img(t *testing.T) {
	testenv.RequireORT(t)
	m, err := Open(t.Context(), testenv.TinyReferenceModel(t))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	const size = 64
	box := image.Rect(16, 24, 40, 48)
	img, mask := testImages(size, size, box)
	gen := func(o Inpaint, strength float64) image.Image {
		t.Helper()
		res, err := m.Generate(t.Context(), Request{Prompt: "a cat", Steps: 4, Seed: 5, InitImage: img, Mask: mask, Strength: strength, Inpaint: o})
		if err != nil {
			t.Fatalf("%+v: %v", o, err)
		}
		if b := res.Images[0].Bounds(); b.Dx() != size || b.Dy() != size {
			t.Fatalf("%+v: image is %v", o, b)
		}
		if s := res.Pixels.Shape(); s[1] != size || s[2] != size {
			t.Errorf("%+v: pixels are %v", o, s)
		}
		for _, kv := range o.Fields() {
			if !strings.Contains(res.Infotexts[0], kv[0]+": "+kv[1]) {
				t.Errorf("%+v: infotext %q lacks %s", o, res.Infotexts[0], kv[0])
			}
		}
		return res.Images[0]
	}
	for _, strength := range []float64{0.75, 1} {
		in, out := regionDiff(gen(Inpaint{}, strength), img, box)
		if out != 0 || in < 10 {
			t.Errorf("strength %v: outside the mask %d levels from the init image (want 0), inside up to %d (want a change)", strength, out, in)
		}
	}
	in, out := regionDiff(gen(Inpaint{Invert: true}, 0.75), img, box)
	if in != 0 || out < 10 {
		t.Errorf("inverted: inside the mask %d levels from the init image (want 0), outside up to %d (want a change)", in, out)
	}
	reach := box.Inset(-11) // beyond the kernel of σ 4 (radius int(2.5σ+0.5) = 10)
	in, out = regionDiff(gen(Inpaint{Blur: 4}, 0.75), img, reach)
	if out != 0 || in < 10 {
		t.Errorf("blur 4: beyond the blur %d levels from the init image (want 0), within up to %d", out, in)
	}
	crop := box.Inset(-4)
	in, out = regionDiff(gen(Inpaint{OnlyMasked: true, Padding: 4}, 0.75), img, crop)
	if out != 0 || in < 10 {
		t.Errorf("only masked: outside the crop %d levels from the init image (want 0), inside up to %d", out, in)
	}
	fills := map[InpaintFill]image.Image{}
	for _, f := range []InpaintFill{FillOriginal, FillColors, FillLatentNoise, FillLatentNothing} {
		fills[f] = gen(Inpaint{Fill: f}, 0.75)
		if in, out := regionDiff(fills[f], img, box); out != 0 {
			t.Errorf("fill %d: outside the mask %d levels from the init image (in %d)", f, out, in)
		}
	}
	for _, f := range []InpaintFill{FillColors, FillLatentNoise, FillLatentNothing} {
		if in, _ := regionDiff(fills[f], fills[FillOriginal], box); in == 0 {
			t.Errorf("fill %d gives the same image as FillOriginal", f)
		}
	}
	for _, bad := range []Request{
		{Prompt: "x", InitImage: img, Inpaint: Inpaint{Blur: 4}},
		{Prompt: "x", InitImage: img, Mask: mask, Inpaint: Inpaint{Blur: -1}},
		{Prompt: "x", InitImage: img, Mask: mask, Inpaint: Inpaint{Fill: 9}},
		{Prompt: "x", InitImage: img, Mask: mask, Width: 128},
	} {
		if _, err := m.Generate(t.Context(), bad); !errors.Is(err, ErrInvalidRequest) {
			t.Errorf("%+v: %v, want an invalid request", bad.Inpaint, err)
		}
	}
}
