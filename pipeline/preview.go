package pipeline

import (
	"image"
	"math"

	"gorgonia.org/tensor"
)

// latentRGB is the well-known linear map from SD 1.x latents to RGB, good
// enough for a preview at latent resolution without running the VAE.
var latentRGB = [4][3]float32{
	{0.298, 0.207, 0.208},
	{0.187, 0.286, 0.173},
	{-0.158, 0.189, 0.264},
	{-0.184, -0.271, -0.473},
}

// preview renders latents [c, h, w] as an h×w image.
func preview(lat []float32, c, h, w int) image.Image {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range h * w {
		var rgb [3]float32
		for ch := range min(c, 4) {
			v := lat[ch*h*w+i]
			for k := range 3 {
				rgb[k] += v * latentRGB[ch][k]
			}
		}
		for k := range 3 {
			x := (rgb[k] + 1) / 2 * 255
			if math.IsNaN(float64(x)) {
				x = 0
			}
			img.Pix[i*4+k] = uint8(min(max(x, 0), 255))
		}
		img.Pix[i*4+3] = 255
	}
	return img
}

// DefaultPreviewEvery is how many steps apart a PreviewDecoder renders a
// request's preview by default (AUTOMATIC1111 shows one every 10 steps by
// default; a TAESD decode at 512×512 costs a fraction of a UNet step).
const DefaultPreviewEvery = 5

// previewTask is one preview to render: a copy of the first image's
// latents (its x0 prediction where the scheduler gives one) after step.
type previewTask struct {
	j    *job
	step int
	lat  []float32
}

// newPreviewQueue returns the preview worker's queue, nil without a
// PreviewDecoder. It holds one task: a newer one replaces it.
func newPreviewQueue(c Components) chan previewTask {
	if c.PreviewDecoder == nil {
		return nil
	}
	return make(chan previewTask, 1)
}

// stepPreview returns the preview of j after step (1-based). Without a
// PreviewDecoder it is the cheap latent map. With one, every PreviewEvery
// steps but the last it queues a render for the preview worker without
// waiting (a queued older render is dropped, so the worker only ever
// decodes the newest latents and the UNet never waits for a preview), and
// returns the newest rendered preview, or the cheap map until the first.
func (p *Pipeline) stepPreview(j *job, step int) image.Image {
	it := j.items[0]
	if p.previewIn == nil {
		return preview(it.latents, p.c.LatentChannels, j.latH, j.latW)
	}
	if step%p.opts.PreviewEvery == 0 && step < len(j.steps) {
		src := it.latents
		switch s := it.sched.(type) {
		case interface{ PredOriginal() []float32 }: // DDIM, DDPM, Euler: the x0 prediction
			if x0 := s.PredOriginal(); len(x0) == len(src) {
				src = x0
			}
		case interface{ Denoised() []float32 }: // LCM
			if d := s.Denoised(); len(d) == len(src) {
				src = d
			}
		}
		t := previewTask{j: j, step: step, lat: append([]float32(nil), src...)}
		for range 2 {
			select {
			case p.previewIn <- t:
				return p.latestPreview(j)
			default:
			}
			select { // drop the older queued task
			case <-p.previewIn:
			default:
			}
		}
	}
	return p.latestPreview(j)
}

// latestPreview returns j's newest rendered preview, or the cheap map.
func (p *Pipeline) latestPreview(j *job) image.Image {
	if img := j.decodedPreview.Load(); img != nil {
		return img
	}
	return preview(j.items[0].latents, p.c.LatentChannels, j.latH, j.latW)
}

// previewStage is the preview worker: it renders the queued previews with
// the PreviewDecoder, one at a time, beside the stages, and stores each in
// its job for the next progress event. A failed render is logged and
// skipped; the request goes on. It returns when the queue closes (after
// the denoise stage's workers return).
func (p *Pipeline) previewStage() {
	for t := range p.previewIn {
		j := t.j
		if j.ctx.Err() != nil {
			continue
		}
		lat := tensor.New(tensor.WithShape(1, p.c.LatentChannels, j.latH, j.latW), tensor.WithBacking(t.lat))
		out, err := p.c.PreviewDecoder.Decode(j.ctx, lat)
		if err != nil {
			if j.ctx.Err() == nil {
				p.log.Warn("pipeline: preview decoder", "request", j.id, "step", t.step, "err", err)
			}
			continue
		}
		s := out.Shape()
		if len(s) != 4 || s[0] != 1 || s[1] != 3 || s[2] <= 0 || s[3] <= 0 {
			p.log.Warn("pipeline: preview decoder returned a bad shape", "shape", s)
			continue
		}
		h, w := s[2], s[3]
		px := make([]float32, h*w*3)
		if err := toHWC(px, out.Data().([]float32), h, w); err != nil {
			continue
		}
		j.decodedPreview.Store(toNRGBA(px, h, w))
	}
}
