package server

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"mime/multipart"
	"net/http"
	"strings"
	"testing"
)

// inpaintImages returns a 64×64 init image and a mask repainting box:
// white on black, or opaque on transparent.
func inpaintImages(box image.Rectangle, alpha bool) (*image.NRGBA, *image.NRGBA) {
	img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	mask := image.NewNRGBA(img.Rect)
	for y := range 64 {
		for x := range 64 {
			img.SetNRGBA(x, y, color.NRGBA{uint8(4 * x), uint8(4 * y), 200, 255})
			in := (image.Point{x, y}).In(box)
			switch {
			case alpha && in:
				mask.SetNRGBA(x, y, color.NRGBA{10, 20, 30, 255})
			case alpha:
				mask.SetNRGBA(x, y, color.NRGBA{200, 200, 200, 0})
			case in:
				mask.SetNRGBA(x, y, color.NRGBA{255, 255, 255, 255})
			default:
				mask.SetNRGBA(x, y, color.NRGBA{0, 0, 0, 255})
			}
		}
	}
	return img, mask
}

func pngBytes(t *testing.T, img image.Image) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// changed returns the largest 8-bit difference between a and b inside r
// and outside it.
func changed(a, b image.Image, r image.Rectangle) (in, out int) {
	for y := range a.Bounds().Dy() {
		for x := range a.Bounds().Dx() {
			ca, cb := color.NRGBAModel.Convert(a.At(x, y)).(color.NRGBA), color.NRGBAModel.Convert(b.At(x, y)).(color.NRGBA)
			d := 0
			for _, p := range [][2]uint8{{ca.R, cb.R}, {ca.G, cb.G}, {ca.B, cb.B}} {
				d = max(d, max(int(p[0])-int(p[1]), int(p[1])-int(p[0])))
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

// TestA1111Inpaint sends masks to /sdapi/v1/img2img with A1111's
// inpainting fields: outside the mask the init image comes back, inside
// it changes; inverted, the other way round; a mask with transparency is
// read from its alpha; "only masked" and the blur keep everything beyond
// their reach; unsupported values are refused naming the field.
func TestA1111Inpaint(t *testing.T) {
	_, ts := newServer(t, Config{})
	box := image.Rect(16, 24, 40, 48)
	img, mask := inpaintImages(box, false)
	_, amask := inpaintImages(box, true)
	b64 := func(m image.Image) string { return base64.StdEncoding.EncodeToString(pngBytes(t, m)) }
	run := func(m image.Image, fields string) image.Image {
		t.Helper()
		body := fmt.Sprintf(`{"prompt":"a cat","steps":4,"seed":3,"init_images":[%q],"mask":%q%s}`, b64(img), b64(m), fields)
		r := post(t, ts.URL+"/sdapi/v1/img2img", body)
		if r.code != http.StatusOK {
			t.Fatalf("%s: %d %s", fields, r.code, r.body)
		}
		var out a1111Response
		r.json(t, &out)
		got, _ := decodePNG(t, out.Images[0])
		if b := got.Bounds(); b.Dx() != 64 || b.Dy() != 64 {
			t.Fatalf("%s: image is %v", fields, b)
		}
		return got
	}
	sharp := `,"mask_blur":0,"inpaint_full_res":false,"inpainting_fill":1`
	for _, c := range []struct {
		name, fields string
		mask         image.Image
		region       image.Rectangle // where the image may change
		inverted     bool
	}{
		{"sharp", sharp, mask, box, false},
		{"alpha mask", sharp, amask, box, false},
		{"inverted", sharp + `,"inpainting_mask_invert":1`, mask, box, true},
		{"latent noise", `,"mask_blur":0,"inpaint_full_res":0,"inpainting_fill":2`, mask, box, false},
		{"A1111's defaults (blur 4, only masked, fill)", "", mask, box.Inset(-11), false},
		{"only masked, padding 8", `,"inpaint_full_res":true,"inpaint_full_res_padding":8,"mask_blur":0`, mask, box.Inset(-8), false},
	} {
		in, out := changed(run(c.mask, c.fields), img, c.region)
		if c.inverted {
			in, out = out, in
		}
		if out != 0 || in < 8 {
			t.Errorf("%s: %d levels changed where the init image must come back, %d where it is repainted", c.name, out, in)
		}
	}
	for _, c := range []struct{ path, body, param string }{
		{"txt2img", fmt.Sprintf(`{"prompt":"x","mask":%q}`, b64(mask)), "mask"},
		{"img2img", fmt.Sprintf(`{"prompt":"x","init_images":[%q],"mask":%q,"mask_blur_x":2,"mask_blur_y":5}`, b64(img), b64(mask)), "mask_blur_x"},
		{"img2img", fmt.Sprintf(`{"prompt":"x","init_images":[%q],"mask":%q,"inpainting_fill":7}`, b64(img), b64(mask)), "inpainting_fill"},
		{"img2img", fmt.Sprintf(`{"prompt":"x","init_images":[%q],"mask":%q,"mask_round":false}`, b64(img), b64(mask)), "mask_round"},
		{"img2img", fmt.Sprintf(`{"prompt":"x","init_images":[%q],"mask":"bm90IGFuIGltYWdl"}`, b64(img)), "mask"},
	} {
		r := post(t, ts.URL+"/sdapi/v1/"+c.path, c.body)
		if msg, _, param := r.apiErr(t); r.code != http.StatusBadRequest || param != c.param {
			t.Errorf("%s %.80s…: %d %q (param %q), want 400 naming %s", c.path, strings.TrimPrefix(c.body, `{"prompt":"x",`), r.code, msg, param, c.param)
		}
	}
	// without a mask, the mask fields at any value change nothing
	r := post(t, ts.URL+"/sdapi/v1/img2img", fmt.Sprintf(`{"prompt":"x","steps":2,"init_images":[%q],"mask_blur":4,"inpainting_fill":1,"mask_round":false}`, b64(img)))
	if r.code != http.StatusOK {
		t.Errorf("img2img with mask fields and no mask: %d %s", r.code, r.body)
	}
}

// TestOpenAIEditMask sends /v1/images/edits an image and a mask whose
// transparent pixels are to be edited (OpenAI's convention): the image
// comes back as sent where the mask is opaque and changes where it is
// transparent.
func TestOpenAIEditMask(t *testing.T) {
	_, ts := newServer(t, Config{FastSteps: 4})
	box := image.Rect(8, 16, 40, 40)
	img, _ := inpaintImages(box, false)
	mask := image.NewNRGBA(img.Rect)
	for y := range 64 {
		for x := range 64 {
			a := uint8(255)
			if (image.Point{x, y}).In(box) {
				a = 0
			}
			mask.SetNRGBA(x, y, color.NRGBA{0, 0, 0, a})
		}
	}
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	_ = mw.WriteField("prompt", "a cat")
	_ = mw.WriteField("seed", "4")
	for name, m := range map[string]image.Image{"image": img, "mask": mask} {
		fw, _ := mw.CreateFormFile(name, name+".png")
		_, _ = fw.Write(pngBytes(t, m))
	}
	_ = mw.Close()
	r := post(t, ts.URL+"/v1/images/edits", b.String(), "Content-Type", mw.FormDataContentType())
	if r.code != http.StatusOK {
		t.Fatalf("edit with a mask: %d %s", r.code, r.body)
	}
	got, _ := r.openAIPNG(t)
	if in, outside := changed(got, img, box); outside != 0 || in < 8 {
		t.Errorf("%d levels changed where the mask is opaque (want 0), %d where it is transparent", outside, in)
	}
}
