package pipeline

import (
	"fmt"
	"image"
	"image/color"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/scheduler"
)

// MaskFill is what the latents under a Request's Mask start from, as
// AUTOMATIC1111's inpainting_fill 1, 2 and 3 (its 0, "fill", is a change
// of the init image's pixels, which the caller makes).
type MaskFill int

// The fills a Request accepts.
const (
	// FillOriginal keeps the init image's latents (A1111's "original").
	FillOriginal MaskFill = iota
	// FillLatentNoise puts the image's initial noise there before noising
	// (A1111's "latent noise").
	FillLatentNoise
	// FillLatentNothing puts zeros there (A1111's "latent nothing").
	FillLatentNothing
)

// inpainting is a job's mask, reduced to the latents.
type inpainting struct {
	keep    []float32 // latH × latW: 1 where the init image is kept, 0 where repainted; nil without a mask
	cond    []float32 // inpainting UNet: the mask channel then the masked image's latents, (1+C) × latH × latW
	init    []float32 // 4-channel UNet: the scaled init latents blended back after every step
	scratch []float32 // one image's latents, for the blend
}

// inpaintUNet reports whether the UNet takes the mask and the masked
// image's latents.
func (p *Pipeline) inpaintUNet() bool { return p.c.UNetInChannels != p.c.LatentChannels }

// fromNoise reports whether r starts from pure noise although it has an
// InitImage: a Mask at strength 1, as diffusers' inpainting pipelines
// (is_strength_max).
func fromNoise(r *Request) bool { return r.Mask != nil && r.Strength == 1 }

// resolveMask checks r's Mask fields (r's size is resolved) and fills
// their defaults.
func (p *Pipeline) resolveMask(r *Request) error {
	if r.Mask == nil {
		if r.MaskFill != FillOriginal {
			return invalid("MaskFill", "set without a Mask")
		}
		if p.inpaintUNet() && p.c.VAEEncoder == nil {
			return invalid("UNet", "this inpainting model has no VAE encoder for its masked-image latents")
		}
		return nil
	}
	if r.InitImage == nil {
		return invalid("Mask", "set without an InitImage")
	}
	if b := r.Mask.Bounds(); b.Dx() != r.Width || b.Dy() != r.Height {
		return invalid("Mask", "mask is %dx%d, request is %dx%d", b.Dx(), b.Dy(), r.Width, r.Height)
	}
	if r.MaskFill < FillOriginal || r.MaskFill > FillLatentNothing {
		return invalid("MaskFill", "unknown fill %d", r.MaskFill)
	}
	if r.Strength == 0 {
		r.Strength = 1
	}
	return nil
}

// needsInitLatents reports whether the encode stage encodes the
// InitImage: for img2img, and for a mask's blend on a 4-channel UNet.
func (p *Pipeline) needsInitLatents(r *Request) bool {
	return r.InitImage != nil && (!fromNoise(r) || !p.inpaintUNet())
}

// encodeImage returns the scaled latents of x [1, 3, H, W].
func (p *Pipeline) encodeImage(j *job, x *tensor.Dense) ([]float32, error) {
	t0 := time.Now()
	lat, err := p.c.VAEEncoder.Encode(j.ctx, x)
	j.metrics.EncodeModel += time.Since(t0)
	if err != nil {
		return nil, err
	}
	if ls := lat.Shape(); len(ls) != 4 || ls[0] != 1 || ls[1]*ls[2]*ls[3] != j.size {
		return nil, fmt.Errorf("vae encoder returned shape %v, want [1 %d %d %d]", ls, p.c.LatentChannels, j.latH, j.latW)
	}
	d := lat.Data().([]float32)
	sf := float32(p.c.ScalingFactor)
	for i := range d {
		d[i] *= sf
	}
	return d, nil
}

// encodeMask sets j.inp: the mask in latent resolution and, for an
// inpainting UNet, its conditioning as diffusers'
// prepare_mask_and_masked_image gives it (no mask: everything repainted
// from a blank image, as AUTOMATIC1111 conditions such a model for
// txt2img). init is the scaled init latents, or nil.
func (p *Pipeline) encodeMask(j *job, init []float32) error {
	r := &j.req
	if r.Mask == nil && !p.inpaintUNet() {
		return nil
	}
	inp := &inpainting{}
	hw := j.latH * j.latW
	if r.Mask != nil {
		inp.keep = keepMask(r.Mask, j.latH, j.latW)
	}
	if !p.inpaintUNet() {
		inp.init, inp.scratch = init, make([]float32, j.size)
		j.inp = inp
		return nil
	}
	var x *tensor.Dense
	mask := make([]float32, hw)
	if r.Mask != nil {
		x = imageTensor(r.InitImage)
		maskImage(x.Data().([]float32), r.Mask)
		nearestMask(mask, r.Mask, j.latH, j.latW)
	} else {
		x = tensor.New(tensor.WithShape(1, 3, r.Height, r.Width), tensor.WithBacking(make([]float32, 3*r.Height*r.Width)))
		for i := range mask {
			mask[i] = 1
		}
	}
	lat, err := p.encodeImage(j, x)
	if err != nil {
		return err
	}
	inp.cond = append(mask, lat...)
	j.inp = inp
	return nil
}

// gray returns the mask's level at (x, y) of its bounds in [0, 255], as
// PIL's convert("L").
func gray(m image.Image, x, y int) uint8 {
	b := m.Bounds()
	if g, ok := m.(*image.Gray); ok {
		return g.GrayAt(b.Min.X+x, b.Min.Y+y).Y
	}
	return color.GrayModel.Convert(m.At(b.Min.X+x, b.Min.Y+y)).(color.Gray).Y
}

// maskImage zeroes the pixels of x [1, 3, H, W] that the mask repaints
// (level ≥ 127.5), as diffusers' image * (mask < 0.5).
func maskImage(x []float32, m image.Image) {
	b := m.Bounds()
	w, h := b.Dx(), b.Dy()
	for y := range h {
		for xx := range w {
			if gray(m, xx, y) >= 128 {
				for c := range 3 {
					x[c*w*h+y*w+xx] = 0
				}
			}
		}
	}
}

// nearestMask writes the mask at latent resolution as diffusers' legacy
// inpainting pipeline makes it: PIL's NEAREST resize (the pixel at the
// centre of each 8×8 block), /255, thresholded at 0.5.
func nearestMask(dst []float32, m image.Image, lh, lw int) {
	b := m.Bounds()
	sx, sy := float64(b.Dx())/float64(lw), float64(b.Dy())/float64(lh)
	for y := range lh {
		for x := range lw {
			px, py := min(int((float64(x)+0.5)*sx), b.Dx()-1), min(int((float64(y)+0.5)*sy), b.Dy()-1)
			if float32(gray(m, px, py))/255 >= 0.5 {
				dst[y*lw+x] = 1
			}
		}
	}
}

// keepMask returns 1 where the latents keep the init image: the mask
// averaged over each latent pixel's block, rounded, as AUTOMATIC1111's
// latent mask with mask_round.
func keepMask(m image.Image, lh, lw int) []float32 {
	b := m.Bounds()
	keep := make([]float32, lh*lw)
	for y := range lh {
		y0, y1 := y*b.Dy()/lh, (y+1)*b.Dy()/lh
		for x := range lw {
			x0, x1 := x*b.Dx()/lw, (x+1)*b.Dx()/lw
			var s, n int
			for yy := y0; yy < y1; yy++ {
				for xx := x0; xx < x1; xx++ {
					s += int(gray(m, xx, yy))
					n++
				}
			}
			if 2*s < 255*n { // mean below one half: kept
				keep[y*lw+x] = 1
			}
		}
	}
	return keep
}

// filled returns the init latents with the repainted region replaced as
// fill says.
func (inp *inpainting) filled(init, noise []float32, fill MaskFill) []float32 {
	out := make([]float32, len(init))
	hw := len(inp.keep)
	for i, v := range init {
		k := inp.keep[i%hw]
		switch fill {
		case FillLatentNoise:
			out[i] = k*v + (1-k)*noise[i]
		case FillLatentNothing:
			out[i] = k * v
		default:
			out[i] = v
		}
	}
	return out
}

// blend puts the kept region back into it's latents after model
// evaluation i: the init latents noised to the level of evaluation i+1,
// the clean init latents after the last.
func (inp *inpainting) blend(it *item, i int) {
	scheduler.AddNoiseAt(it.sched, inp.scratch, inp.init, it.noise, i+1)
	hw := len(inp.keep)
	for q, v := range inp.scratch {
		if inp.keep[q%hw] == 1 {
			it.latents[q] = v
		}
	}
}

// unetSample returns the UNet's sample for the k·n rows of b.x: the
// latents alone, or for an inpainting UNet each row followed by its job's
// mask and masked-image latents (diffusers' concat along channels).
func (p *Pipeline) unetSample(b *unetBatch, k int) *tensor.Dense {
	n, j0 := len(b.items), b.jobs[0]
	if !p.inpaintUNet() {
		return tensor.New(tensor.WithShape(k*n, p.c.LatentChannels, j0.latH, j0.latW), tensor.WithBacking(b.x))
	}
	size := j0.size
	row := size + len(j0.inp.cond)
	if len(b.x9) != k*n*row {
		b.x9 = make([]float32, k*n*row)
	}
	for r := range k * n {
		copy(b.x9[r*row:r*row+size], b.x[r*size:(r+1)*size])
		copy(b.x9[r*row+size:(r+1)*row], b.job[r%n].inp.cond)
	}
	return tensor.New(tensor.WithShape(k*n, p.c.UNetInChannels, j0.latH, j0.latW), tensor.WithBacking(b.x9))
}
