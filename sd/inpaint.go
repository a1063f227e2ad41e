package sd

import (
	"cmp"
	"fmt"
	"image"
	"image/color"
	"math"
	"strconv"

	"golang.org/x/image/draw"
	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
)

// Inpaint holds AUTOMATIC1111's inpainting options of a Request with a
// Mask. The zero value is A1111's defaults with mask_blur 0 and
// inpainting_fill "original".
type Inpaint struct {
	// Blur is mask_blur: the mask's Gaussian blur σ in pixels, up to 64
	// (A1111's default is 4); 0 leaves it sharp.
	Blur int
	// Invert is inpainting_mask_invert: repaint the black region instead.
	Invert bool
	// Fill is inpainting_fill: what the masked region starts from.
	Fill InpaintFill
	// OnlyMasked is inpaint_full_res ("only masked"): the mask's bounding
	// box plus Padding pixels, widened to the request's aspect ratio, is
	// generated at the request's Width × Height and pasted back into the
	// InitImage, which may then be of any size.
	OnlyMasked bool
	// Padding is inpaint_full_res_padding in pixels.
	Padding int
	// NoOverlay returns the generated images as decoded. By default, as
	// in A1111, the InitImage's pixels are put back outside the mask,
	// through the blurred mask.
	NoOverlay bool
}

// InpaintFill is what a Request's masked region starts from.
type InpaintFill int

// The fills a Request accepts; A1111Fill gives AUTOMATIC1111's numbers.
const (
	// FillOriginal starts from the InitImage (A1111's 1, "original").
	FillOriginal InpaintFill = iota
	// FillColors starts from the InitImage's colours blurred into the
	// mask (A1111's 0, "fill"; blurs approximated with box blurs).
	FillColors
	// FillLatentNoise starts from the seed's noise (A1111's 2).
	FillLatentNoise
	// FillLatentNothing starts from zero latents (A1111's 3).
	FillLatentNothing
)

// A1111Fill returns the InpaintFill of AUTOMATIC1111's inpainting_fill
// (0 fill, 1 original, 2 latent noise, 3 latent nothing).
func A1111Fill(n int) (InpaintFill, error) {
	switch n {
	case 0:
		return FillColors, nil
	case 1:
		return FillOriginal, nil
	case 2:
		return FillLatentNoise, nil
	case 3:
		return FillLatentNothing, nil
	}
	return 0, fmt.Errorf("sd: inpainting_fill %d: want 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)", n)
}

// maxBlur bounds Inpaint.Blur (A1111's own slider stops at 64): the blur
// costs 5σ operations per pixel, so a request cannot ask for unbounded
// work.
const maxBlur = 64

// inpaintJob is what Submit prepared for a Request with a Mask and what
// the result needs: the overlay and where the crop goes back.
type inpaintJob struct {
	orig    *image.NRGBA // the InitImage
	overlay *image.Gray  // the generated image's weight per pixel; nil: none
	paste   image.Rectangle
	crop    bool
}

// prepare returns r's engine form with its Mask prepared (prepareInpaint),
// r as the engine runs it (its size and images), for the memory estimate,
// and what the result needs done.
func (r Request) prepare() (pipeline.Request, Request, *inpaintJob, error) {
	e := r.engine()
	inp, err := prepareInpaint(r, &e)
	if err != nil {
		return e, r, nil, err
	}
	if r.Mask != nil {
		r.Width, r.Height, r.InitImage, r.Mask = e.Width, e.Height, e.InitImage, e.Mask
	}
	return e, r, inp, nil
}

// prepareInpaint applies r.Inpaint to r's engine form e: the mask blurred
// or inverted, the crop of "only masked", the colour fill. It returns nil
// for a request without a Mask.
func prepareInpaint(r Request, e *pipeline.Request) (*inpaintJob, error) {
	o := r.Inpaint
	if r.Mask == nil {
		if o != (Inpaint{}) {
			return nil, &RequestError{Field: "Inpaint", Reason: "set without a Mask"}
		}
		return nil, nil
	}
	if r.InitImage == nil {
		return nil, &RequestError{Field: "Mask", Reason: "set without an InitImage"}
	}
	ib, mb := r.InitImage.Bounds(), r.Mask.Bounds()
	if ib.Dx() != mb.Dx() || ib.Dy() != mb.Dy() {
		return nil, &RequestError{Field: "Mask", Reason: fmt.Sprintf("mask is %dx%d, the init image %dx%d", mb.Dx(), mb.Dy(), ib.Dx(), ib.Dy())}
	}
	if o.Blur < 0 || o.Blur > maxBlur || o.Padding < 0 || o.Padding > MaxSize {
		return nil, &RequestError{Field: "Inpaint", Reason: fmt.Sprintf("blur %d or padding %d is outside [0, %d] and [0, %d]", o.Blur, o.Padding, maxBlur, MaxSize)}
	}
	if o.Fill < FillOriginal || o.Fill > FillLatentNothing {
		return nil, &RequestError{Field: "Inpaint", Reason: fmt.Sprintf("unknown fill %d", o.Fill)}
	}
	w, h := ib.Dx(), ib.Dy()
	mask := grayOf(r.Mask)
	if o.Invert {
		for i, v := range mask.Pix {
			mask.Pix[i] = 255 - v
		}
	}
	if o.Blur > 0 {
		gaussianBlur(mask, float64(o.Blur))
	}
	j := &inpaintJob{orig: nrgbaOf(r.InitImage), paste: image.Rect(0, 0, w, h)}
	if !o.NoOverlay {
		j.overlay = mask // A1111's mask_for_overlay: the blurred mask, doubled for a whole-image inpaint
		if !o.OnlyMasked {
			j.overlay = image.NewGray(mask.Rect)
			for i, v := range mask.Pix {
				j.overlay.Pix[i] = uint8(min(2*int(v), 255))
			}
		}
	}
	img := j.orig
	if o.OnlyMasked {
		pw, ph := cmp.Or(r.Width, w), cmp.Or(r.Height, h)
		if box, ok := cropRegion(mask, o.Padding); ok {
			j.paste = expandCrop(box, pw, ph, w, h)
			j.crop = true
			mask = resizeGray(mask.SubImage(j.paste).(*image.Gray), pw, ph)
			img = resizeNRGBA(img.SubImage(j.paste).(*image.NRGBA), pw, ph)
		}
	}
	if !j.crop && (r.Width != 0 && r.Width != w || r.Height != 0 && r.Height != h) {
		return nil, &RequestError{Field: "Mask", Reason: fmt.Sprintf("the init image is %dx%d, request is %dx%d (only Inpaint.OnlyMasked generates at another size)", w, h, r.Width, r.Height)}
	}
	if o.Fill == FillColors {
		img = fillColors(img, mask)
	}
	e.InitImage, e.Mask = img, mask
	e.Width, e.Height = img.Rect.Dx(), img.Rect.Dy()
	switch o.Fill {
	case FillLatentNoise:
		e.MaskFill = pipeline.FillLatentNoise
	case FillLatentNothing:
		e.MaskFill = pipeline.FillLatentNothing
	}
	if !j.crop && j.overlay == nil {
		return nil, nil // nothing to do to the result
	}
	return j, nil
}

// finish pastes the generated images back and overlays the InitImage, in
// float32 on res.Pixels, then rounds Images from them.
func (j *inpaintJob) finish(res *pipeline.Result) {
	if j == nil {
		return
	}
	n := len(res.Images)
	ob := j.orig.Rect
	w, h := ob.Dx(), ob.Dy()
	s := res.Pixels.Shape()
	gh, gw := s[1], s[2]
	src := res.Pixels.Data().([]float32)
	out := make([]float32, n*h*w*3)
	for m := range n {
		gen := src[m*gh*gw*3 : (m+1)*gh*gw*3]
		dst := out[m*h*w*3 : (m+1)*h*w*3]
		for y := range h { // the InitImage, then the crop pasted in
			for x := range w {
				p := j.orig.Pix[y*j.orig.Stride+x*4:]
				for c := range 3 {
					dst[(y*w+x)*3+c] = float32(p[c]) / 255
				}
			}
		}
		pr := j.paste
		resizeInto(dst, w, pr, gen, gw, gh)
		if j.overlay != nil {
			for y := range h {
				for x := range w {
					a := float32(j.overlay.Pix[y*j.overlay.Stride+x]) / 255
					p := j.orig.Pix[y*j.orig.Stride+x*4:]
					for c := range 3 {
						i := (y*w+x)*3 + c
						dst[i] = float32(p[c])/255*(1-a) + dst[i]*a
					}
				}
			}
		}
		res.Images[m] = toNRGBA(dst, h, w)
	}
	res.Pixels = tensor.New(tensor.WithShape(n, h, w, 3), tensor.WithBacking(out))
}

// resizeInto writes gen (gw × gh HWC) bilinearly resized into the
// rectangle r of dst (w wide, HWC).
func resizeInto(dst []float32, w int, r image.Rectangle, gen []float32, gw, gh int) {
	rw, rh := r.Dx(), r.Dy()
	for y := range rh {
		fy := max((float64(y)+0.5)*float64(gh)/float64(rh)-0.5, 0)
		y0 := min(int(fy), gh-1)
		y1, ty := min(y0+1, gh-1), float32(fy-float64(y0))
		for x := range rw {
			fx := max((float64(x)+0.5)*float64(gw)/float64(rw)-0.5, 0)
			x0 := min(int(fx), gw-1)
			x1, tx := min(x0+1, gw-1), float32(fx-float64(x0))
			for c := range 3 {
				a := gen[(y0*gw+x0)*3+c]*(1-tx) + gen[(y0*gw+x1)*3+c]*tx
				b := gen[(y1*gw+x0)*3+c]*(1-tx) + gen[(y1*gw+x1)*3+c]*tx
				dst[((r.Min.Y+y)*w+r.Min.X+x)*3+c] = a*(1-ty) + b*ty
			}
		}
	}
}

// toNRGBA rounds [0, 1] HWC values to 8 bits.
func toNRGBA(px []float32, h, w int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range h * w {
		for c := range 3 {
			img.Pix[i*4+c] = uint8(math.RoundToEven(float64(min(max(px[i*3+c], 0), 1) * 255)))
		}
		img.Pix[i*4+3] = 255
	}
	return img
}

// grayOf returns a copy of m as gray levels at the origin (PIL's
// convert("L")).
func grayOf(m image.Image) *image.Gray {
	b := m.Bounds()
	g := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := range b.Dy() {
		for x := range b.Dx() {
			g.Pix[y*g.Stride+x] = color.GrayModel.Convert(m.At(b.Min.X+x, b.Min.Y+y)).(color.Gray).Y
		}
	}
	return g
}

// nrgbaOf returns a copy of m as opaque NRGBA at the origin (alpha
// dropped, as PIL's convert("RGB")).
func nrgbaOf(m image.Image) *image.NRGBA {
	b := m.Bounds()
	n := image.NewNRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	for y := range b.Dy() {
		for x := range b.Dx() {
			c := color.NRGBAModel.Convert(m.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA)
			c.A = 255
			n.SetNRGBA(x, y, c)
		}
	}
	return n
}

// cropRegion is A1111's masking.get_crop_region: the bounding box of the
// mask's non-zero pixels grown by pad and clipped; false for an empty mask.
func cropRegion(m *image.Gray, pad int) (image.Rectangle, bool) {
	b := m.Bounds()
	box := image.Rectangle{Min: b.Max, Max: b.Min}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if m.GrayAt(x, y).Y != 0 {
				box.Min.X, box.Min.Y = min(box.Min.X, x), min(box.Min.Y, y)
				box.Max.X, box.Max.Y = max(box.Max.X, x+1), max(box.Max.Y, y+1)
			}
		}
	}
	if box.Empty() {
		return box, false
	}
	return image.Rect(max(box.Min.X-pad, b.Min.X), max(box.Min.Y-pad, b.Min.Y), min(box.Max.X+pad, b.Max.X), min(box.Max.Y+pad, b.Max.Y)), true
}

// expandCrop is A1111's masking.expand_crop_region: r widened to the
// processing size's aspect ratio, moved and clipped to the image.
func expandCrop(r image.Rectangle, pw, ph, iw, ih int) image.Rectangle {
	x1, y1, x2, y2 := r.Min.X, r.Min.Y, r.Max.X, r.Max.Y
	ratioCrop := float64(x2-x1) / float64(y2-y1)
	ratioProc := float64(pw) / float64(ph)
	grow := func(a1, a2, desired, size int) (int, int) {
		diff := desired - (a2 - a1)
		a1 -= diff / 2
		a2 += diff - diff/2
		if a2 >= size {
			d := a2 - size
			a2 -= d
			a1 -= d
		}
		if a1 < 0 {
			a2 -= a1
			a1 = 0
		}
		return a1, min(a2, size)
	}
	if ratioCrop > ratioProc {
		y1, y2 = grow(y1, y2, int(float64(x2-x1)/ratioProc), ih)
	} else {
		x1, x2 = grow(x1, x2, int(float64(y2-y1)*ratioProc), iw)
	}
	return image.Rect(x1, y1, x2, y2)
}

// resizeGray and resizeNRGBA scale to w × h (Catmull-Rom; A1111 uses
// Lanczos).
func resizeGray(m *image.Gray, w, h int) *image.Gray {
	d := image.NewGray(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(d, d.Rect, m, m.Bounds(), draw.Src, nil)
	return d
}

func resizeNRGBA(m *image.NRGBA, w, h int) *image.NRGBA {
	d := image.NewNRGBA(image.Rect(0, 0, w, h))
	draw.CatmullRom.Scale(d, d.Rect, m, m.Bounds(), draw.Src, nil)
	return d
}

// Fields returns the options as AUTOMATIC1111's infotext writes them
// ("Mask blur", "Mask mode", "Masked content", "Inpaint area", "Masked
// area padding"), leaving out what is at its default.
func (o Inpaint) Fields() [][2]string {
	var f [][2]string
	if o.Blur > 0 {
		f = append(f, [2]string{"Mask blur", strconv.Itoa(o.Blur)})
	}
	if o.Invert {
		f = append(f, [2]string{"Mask mode", "Inpaint not masked"})
	}
	if name, ok := map[InpaintFill]string{FillColors: "fill", FillLatentNoise: "latent noise", FillLatentNothing: "latent nothing"}[o.Fill]; ok {
		f = append(f, [2]string{"Masked content", name})
	}
	if o.OnlyMasked {
		f = append(f, [2]string{"Inpaint area", "Only masked"}, [2]string{"Masked area padding", strconv.Itoa(o.Padding)})
	}
	return f
}
