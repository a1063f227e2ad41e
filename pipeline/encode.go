package pipeline

import (
	"fmt"
	"image"
	"image/color"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/rng"
)

// encode is the encode stage's work on one job: the prompt embeddings, and
// each image's generator, scheduler and initial latents.
func (p *Pipeline) encode(j *job) error {
	start := time.Now()
	j.metrics.EncodeQueue = start.Sub(j.start)
	defer func() { j.metrics.Encode = time.Since(start) }()
	r := &j.req

	cond := p.c.Tokenizer.Encode(r.Prompt)
	ids := cond
	batch := 1
	if j.cfg {
		uncond := p.c.Tokenizer.Encode(r.NegativePrompt)
		if len(uncond) != len(cond) {
			return fmt.Errorf("tokenizer gave %d ids for the negative prompt and %d for the prompt", len(uncond), len(cond))
		}
		ids = append(append(make([]int32, 0, 2*len(cond)), uncond...), cond...)
		batch = 2
	}
	t0 := time.Now()
	emb, err := p.c.TextEncoder.Encode(j.ctx, ids, batch)
	j.metrics.EncodeModel += time.Since(t0)
	if err != nil {
		return err
	}
	s := emb.Shape()
	if len(s) != 3 || s[0] != batch {
		return fmt.Errorf("text encoder returned shape %v for batch %d", s, batch)
	}
	j.seq, j.hidden = s[1], s[2]
	d := emb.Data().([]float32)
	n := j.seq * j.hidden
	if j.cfg {
		j.uncond, j.cond = d[:n], d[n:2*n]
	} else {
		j.cond = d[:n]
	}

	var init []float32 // img2img: scaled init latents of one image
	if r.InitImage != nil {
		x := imageTensor(r.InitImage)
		t0 := time.Now()
		lat, err := p.c.VAEEncoder.Encode(j.ctx, x)
		j.metrics.EncodeModel += time.Since(t0)
		if err != nil {
			return err
		}
		if ls := lat.Shape(); len(ls) != 4 || ls[0] != 1 || ls[1]*ls[2]*ls[3] != j.size {
			return fmt.Errorf("vae encoder returned shape %v, want [1 %d %d %d]", ls, p.c.LatentChannels, j.latH, j.latW)
		}
		init = lat.Data().([]float32)
		sf := float32(p.c.ScalingFactor)
		for i := range init {
			init[i] *= sf
		}
	}

	j.items = make([]*item, r.ImagesPerPrompt)
	for i := range j.items {
		it := &item{seed: r.Seed + int64(i), latents: make([]float32, j.size)}
		if it.gen, err = rng.New(r.Generator, uint64(it.seed)); err != nil {
			return err
		}
		if it.sched, err = p.newScheduler(*r, it.gen); err != nil {
			return err
		}
		noise := it.latents
		if init != nil {
			noise = make([]float32, j.size)
		}
		if r.Latents != nil {
			copy(noise, r.Latents[i*j.size:(i+1)*j.size])
		} else {
			it.gen.Randn(noise)
		}
		if init != nil {
			it.sched.AddNoise(it.latents, init, noise)
		} else {
			sigma := float32(it.sched.InitNoiseSigma())
			for k := range it.latents {
				it.latents[k] *= sigma
			}
		}
		j.items[i] = it
	}
	j.steps = append([]float64(nil), j.items[0].sched.Timesteps()...)
	if p.onEncoded != nil {
		p.onEncoded(j)
	}
	return nil
}

// imageTensor converts an image to [1, 3, H, W] float32 in [-1, 1], as
// diffusers' preprocessing does (x/255*2-1 in float32).
func imageTensor(img image.Image) *tensor.Dense {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	d := make([]float32, 3*w*h)
	for y := range h {
		for x := range w {
			c := color.NRGBAModel.Convert(img.At(b.Min.X+x, b.Min.Y+y)).(color.NRGBA) // alpha dropped, as PIL's convert("RGB")
			for c, v := range [3]uint8{c.R, c.G, c.B} {
				f := float32(v) / 255
				d[c*w*h+y*w+x] = 2*f - 1
			}
		}
	}
	return tensor.New(tensor.WithShape(1, 3, h, w), tensor.WithBacking(d))
}
