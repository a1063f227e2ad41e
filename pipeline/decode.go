package pipeline

import (
	"errors"
	"fmt"
	"image"
	"math"
	"time"

	"gorgonia.org/tensor"
)

// ErrNaN reports a model output with NaN or infinite values, the known
// failure of float16 VAE decoders on some latents.
var ErrNaN = errors.New("pipeline: model output is not finite")

// decode is the decode stage's work on one job: VAE decode of each image,
// clamping, and conversion to images.
func (p *Pipeline) decode(j *job) error {
	j.at.decodeStart = time.Now()
	r := j.req
	n := len(j.items)
	inv := float32(1 / p.c.ScalingFactor) // 1/0.18215 as a float32 factor, as diffusers' numpy code
	dec := p.c.VAEDecoder
	if r.FastDecode { // TAESD takes the latents as they are
		inv, dec = 1, p.c.FastDecoder
	}
	h, w := r.Height, r.Width
	pixels := make([]float32, n*h*w*3)
	res := &Result{Request: r.detached(), Pixels: tensor.New(tensor.WithShape(n, h, w, 3), tensor.WithBacking(pixels))}
	lat := make([]float32, j.size)
	for m, it := range j.items {
		final := it.latents
		if d, ok := it.sched.(interface{ Denoised() []float32 }); ok {
			final = d.Denoised() // LCM decodes its denoised prediction
		}
		for k, v := range final {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("image %d: latents: %w", m, ErrNaN)
			}
			lat[k] = inv * v
		}
		t0 := time.Now()
		// one image per call, as diffusers' ONNX pipeline decodes
		img, err := dec.Decode(j.ctx, tensor.New(tensor.WithShape(1, p.c.LatentChannels, j.latH, j.latW), tensor.WithBacking(lat)))
		j.metrics.DecodeModel += time.Since(t0)
		if err != nil {
			return err
		}
		if s := img.Shape(); len(s) != 4 || s[0] != 1 || s[1] != 3 || s[2] != h || s[3] != w {
			return fmt.Errorf("vae decoder returned shape %v, want [1 3 %d %d]", s, h, w)
		}
		px := pixels[m*h*w*3 : (m+1)*h*w*3]
		if err := toHWC(px, img.Data().([]float32), h, w); err != nil {
			return fmt.Errorf("image %d: vae decoder: %w", m, err)
		}
		res.Images = append(res.Images, toNRGBA(px, h, w))
		res.Seeds = append(res.Seeds, it.seed)
	}
	j.at.decodeEnd = time.Now()
	res.Metrics = j.timings()
	p.m.completed(&res.Metrics, n)
	j.finish(outcome{res: res})
	return nil
}

// toHWC maps CHW pixels in [-1, 1] to HWC values in [0, 1]: clip(x/2+0.5).
func toHWC(dst, src []float32, h, w int) error {
	for c := range 3 {
		for i, v := range src[c*h*w : (c+1)*h*w] {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return ErrNaN
			}
			v = v/2 + 0.5
			dst[i*3+c] = min(max(v, 0), 1)
		}
	}
	return nil
}

// toNRGBA rounds [0, 1] HWC values to 8 bits as diffusers' numpy_to_pil
// does: round-half-even of x·255.
func toNRGBA(px []float32, h, w int) *image.NRGBA {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range h * w {
		for c := range 3 {
			img.Pix[i*4+c] = uint8(math.RoundToEven(float64(px[i*3+c] * 255)))
		}
		img.Pix[i*4+3] = 255
	}
	return img
}
