package pipeline

import (
	"fmt"
	"image"
	"image/color"
	"time"

	"gorgonia.org/tensor"
)

// encode is the encode stage's work on one job: the prompt embeddings, and
// each image's generator, scheduler and initial latents.
func (p *Pipeline) encode(j *job) error {
	j.at.encodeStart = time.Now()
	defer func() { j.at.encodeEnd = time.Now() }()
	r := &j.req

	if err := p.encodePrompts(j); err != nil {
		return err
	}

	var init []float32 // img2img: scaled init latents of one image
	if p.needsInitLatents(r) {
		var err error
		if init, err = p.encodeImage(j, imageTensor(r.InitImage)); err != nil {
			return err
		}
	}
	if err := p.encodeMask(j, init); err != nil {
		return err
	}

	j.items = make([]*item, r.ImagesPerPrompt)
	var batchNoise []float32 // NoiseOneGenerator: the batch's noise, drawn at once
	if r.BatchNoise == NoiseOneGenerator && r.Latents == nil && r.ImagesPerPrompt > 1 {
		batchNoise = make([]float32, r.ImagesPerPrompt*j.size)
		j.first.gen.Randn(batchNoise)
	}
	for i := range j.items {
		it := j.first // built by resolve, which checked the request with it
		if i > 0 {
			var err error
			if it, err = p.newItem(*r, i, j.first); err != nil {
				return err
			}
		}
		noise := it.latents
		if init != nil {
			noise = make([]float32, j.size)
		}
		switch {
		case r.Latents != nil:
			copy(noise, r.Latents[i*j.size:(i+1)*j.size])
		case batchNoise != nil:
			copy(noise, batchNoise[i*j.size:(i+1)*j.size])
		default:
			it.gen.Randn(noise)
		}
		if init != nil && !fromNoise(r) {
			src := init
			if r.MaskFill != FillOriginal {
				src = j.inp.filled(init, noise, r.MaskFill)
			}
			it.sched.AddNoise(it.latents, src, noise)
		} else {
			if init != nil {
				copy(it.latents, noise)
			}
			sigma := float32(it.sched.InitNoiseSigma())
			for k := range it.latents {
				it.latents[k] *= sigma
			}
		}
		if j.inp != nil && j.inp.init != nil {
			it.noise = noise // for the blend
		}
		j.items[i] = it
	}
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
	if n, ok := img.(*image.NRGBA); ok { // the common case, without a conversion per pixel
		for y := range h {
			row := n.Pix[(y+b.Min.Y-n.Rect.Min.Y)*n.Stride+(b.Min.X-n.Rect.Min.X)*4:]
			for x := range w {
				for c := range 3 {
					d[c*w*h+y*w+x] = 2*(float32(row[x*4+c])/255) - 1
				}
			}
		}
		return tensor.New(tensor.WithShape(1, 3, h, w), tensor.WithBacking(d))
	}
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

// encodePrompts sets j.cond and j.uncond: the text encoder's hidden states
// for the prompt and the negative prompt, [seq, hidden] each, from the
// chunks the plan tokenized.
func (p *Pipeline) encodePrompts(j *job) error {
	r := &j.req
	chunks := j.chunks
	n := len(chunks[0])
	ids := make([]int32, 0, len(chunks)*n)
	for _, c := range chunks {
		ids = append(ids, c...)
	}
	t0 := time.Now()
	var emb, pooled *tensor.Dense
	var err error
	if p.c.Added {
		var ids2 []int32
		for _, c := range j.chunks2 {
			ids2 = append(ids2, c...)
		}
		emb, pooled, err = p.c.TextEncoder.(PooledEncoder).EncodePooled(j.ctx, ids, ids2, len(chunks))
	} else if le, ok := p.c.TextEncoder.(LoRAEncoder); ok && len(r.LoRAs) > 0 {
		emb, err = le.EncodeLoRA(j.ctx, ids, len(chunks), r.LoRAs)
	} else {
		emb, err = p.c.TextEncoder.Encode(j.ctx, ids, len(chunks))
	}
	j.metrics.EncodeModel += time.Since(t0)
	if err != nil {
		return err
	}
	s := emb.Shape()
	if len(s) != 3 || s[0] != len(chunks) || s[1] != n {
		return fmt.Errorf("text encoder returned shape %v for %d sequences of %d", s, len(chunks), n)
	}
	j.hidden = s[2]
	d := emb.Data().([]float32)
	per := n * j.hidden
	parts := []int{j.hidden}
	if se, ok := p.c.TextEncoder.(SplitEncoder); ok {
		if ps := se.HiddenParts(); len(ps) > 0 && sum(ps) == j.hidden {
			parts = ps
		}
	}
	for c, w := range j.weights {
		for k, off := range partOffsets(parts) {
			applyWeightsPart(d[c*per:(c+1)*per], w, j.hidden, off, parts[k])
		}
	}
	// each prompt's chunks are consecutive, so concatenation along the
	// sequence is a plain slice
	k := j.perText
	j.seq = k * n
	if j.guided {
		j.uncond, j.cond = d[:k*per], d[k*per:2*k*per]
	} else {
		j.cond = d[:k*per]
	}
	if p.c.Added {
		if err := j.setPooled(pooled, len(chunks)); err != nil {
			return err
		}
	}
	if j.guided && p.c.ZeroEmptyNegative && r.NegativePrompt == "" {
		clear(j.uncond) // diffusers' force_zeros_for_empty_prompt
		clear(j.uncondPooled)
	}
	return nil
}

// setPooled takes each prompt's pooled embedding from the encoder's
// pooled output for the chunks: that of the prompt's first chunk, as
// AUTOMATIC1111 pools a long prompt.
func (j *job) setPooled(pooled *tensor.Dense, rows int) error {
	s := pooled.Shape()
	if len(s) != 2 || s[0] != rows || s[1] <= 0 {
		return fmt.Errorf("text encoder returned pooled shape %v for %d sequences", s, rows)
	}
	w, d := s[1], pooled.Data().([]float32)
	at := 0
	if j.guided {
		j.uncondPooled = d[:w]
		at = j.perText
	}
	j.pooled = d[at*w : (at+1)*w]
	return nil
}

// applyWeights scales each token's hidden state by its weight and restores
// the chunk's original mean, as AUTOMATIC1111 does. All-one weights leave z
// untouched.
func applyWeights(z []float32, w []float32, hidden int) {
	applyWeightsPart(z, w, hidden, 0, hidden)
}

// applyWeightsPart is applyWeights on columns [off, off+width) of each
// token's hidden state alone: one encoder's part of concatenated states,
// whose mean AUTOMATIC1111 restores per encoder (SDXL's two embedders).
func applyWeightsPart(z []float32, w []float32, hidden, off, width int) {
	ones := true
	for _, v := range w {
		ones = ones && v == 1
	}
	if ones {
		return
	}
	tokens := len(z) / hidden
	cols := func(t int) []float32 { return z[t*hidden+off : t*hidden+off+width] }
	partMean := func() float64 {
		var s float64
		for t := range tokens {
			for _, v := range cols(t) {
				s += float64(v)
			}
		}
		return s / float64(tokens*width)
	}
	before := partMean()
	for t, v := range w {
		c := cols(t)
		for i := range c {
			c[i] *= v
		}
	}
	after := partMean()
	if after == 0 {
		return
	}
	f := float32(before / after)
	for t := range tokens {
		c := cols(t)
		for i := range c {
			c[i] *= f
		}
	}
}

// partOffsets returns where each part of widths parts starts.
func partOffsets(parts []int) []int {
	offs := make([]int, len(parts))
	for i := 1; i < len(parts); i++ {
		offs[i] = offs[i-1] + parts[i-1]
	}
	return offs
}

func mean(x []float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(v)
	}
	return s / float64(len(x))
}

func sum(x []int) int {
	n := 0
	for _, v := range x {
		n += v
	}
	return n
}
