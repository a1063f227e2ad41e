package server

import (
	"bytes"
	"encoding/json"
	"image"
	"image/color"

	"github.com/sdpipe/sdpipe/sd"
)

// a1111Mask is A1111's inpainting fields of an img2img body.
type a1111Mask struct {
	MaskBlur              *int      `json:"mask_blur,omitempty"`
	MaskBlurX             *int      `json:"mask_blur_x,omitempty"`
	MaskBlurY             *int      `json:"mask_blur_y,omitempty"`
	InpaintingFill        *int      `json:"inpainting_fill,omitempty"`
	InpaintFullRes        *flexBool `json:"inpaint_full_res,omitempty"`
	InpaintFullResPadding *int      `json:"inpaint_full_res_padding,omitempty"`
	InpaintingMaskInvert  *flexBool `json:"inpainting_mask_invert,omitempty"`
}

// flexBool reads true/false or 1/0, as A1111's clients send either.
type flexBool bool

// UnmarshalJSON implements json.Unmarshaler.
func (b *flexBool) UnmarshalJSON(v []byte) error {
	switch string(bytes.TrimSpace(v)) {
	case "true", "1":
		*b = true
	case "false", "0":
		*b = false
	default:
		return &json.UnsupportedValueError{Str: string(v)}
	}
	return nil
}

// a1111Inpaint returns the Inpaint options of in, with A1111's API
// defaults for the fields left out: mask_blur 4, inpainting_fill 0
// (fill), inpaint_full_res true, inpaint_full_res_padding 0.
func a1111Inpaint(in *a1111Request) (sd.Inpaint, error) {
	o := sd.Inpaint{Blur: 4, Fill: sd.FillColors, OnlyMasked: true}
	bx, by := 4, 4
	if in.MaskBlurX != nil {
		bx = *in.MaskBlurX
	}
	if in.MaskBlurY != nil {
		by = *in.MaskBlurY
	}
	if in.MaskBlur != nil {
		bx, by = *in.MaskBlur, *in.MaskBlur
	}
	if bx != by {
		return o, badRequest("mask_blur_x", "mask_blur_x %d and mask_blur_y %d: one blur for both axes is supported (send mask_blur)", bx, by)
	}
	if bx < 0 || bx > 64 {
		return o, badRequest("mask_blur", "mask_blur: %d is outside [0, 64]", bx)
	}
	o.Blur = bx
	if in.InpaintingFill != nil {
		f, err := sd.A1111Fill(*in.InpaintingFill)
		if err != nil {
			return o, badRequest("inpainting_fill", "inpainting_fill: %d: want 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)", *in.InpaintingFill)
		}
		o.Fill = f
	}
	if in.InpaintFullRes != nil {
		o.OnlyMasked = bool(*in.InpaintFullRes)
	}
	if in.InpaintFullResPadding != nil {
		if p := *in.InpaintFullResPadding; p < 0 || p > 4096 {
			return o, badRequest("inpaint_full_res_padding", "inpaint_full_res_padding: %d is outside [0, 4096]", p)
		}
		o.Padding = *in.InpaintFullResPadding
	}
	if in.InpaintingMaskInvert != nil {
		o.Invert = bool(*in.InpaintingMaskInvert)
	}
	return o, nil
}

// maskOf returns a mask image as gray levels, white repainted. A mask with
// transparency is its alpha channel binarized at 128 (A1111's
// create_binary_mask: opaque repainted); with transparent = true the other
// way round (OpenAI's images/edits: transparent repainted).
func maskOf(m image.Image, transparent bool) *image.Gray {
	b := m.Bounds()
	g := image.NewGray(image.Rect(0, 0, b.Dx(), b.Dy()))
	alpha := false
	for y := b.Min.Y; y < b.Max.Y && !alpha; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			if _, _, _, a := m.At(x, y).RGBA(); a != 0xffff {
				alpha = true
				break
			}
		}
	}
	for y := range b.Dy() {
		for x := range b.Dx() {
			c := m.At(b.Min.X+x, b.Min.Y+y)
			var v uint8
			switch {
			case alpha:
				_, _, _, a := c.RGBA()
				if (a>>8 > 128) != transparent {
					v = 255
				}
			case transparent: // fully opaque: nothing to edit
			default:
				v = color.GrayModel.Convert(c).(color.Gray).Y
			}
			g.Pix[y*g.Stride+x] = v
		}
	}
	return g
}
