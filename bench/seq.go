package main

import (
	"context"
	"fmt"
	"image"
	"math"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/sd"
)

// sequential is the baseline: the loop a user would write on the
// components of an opened folder, one request after another, with no
// engine. Its model calls go through the same recorder as the engines'.
type sequential struct {
	f   *sd.Folder
	enc pipeline.Encoder
	den pipeline.Denoiser
	dec pipeline.Decoder
}

// generate runs req (resolved: every field set) and returns the image and
// the request's timeline (Submitted is the start).
func (s *sequential) generate(ctx context.Context, req pipeline.Request) (*image.NRGBA, RequestTiming, error) {
	var tm RequestTiming
	t0 := time.Now()
	tm.submitted, tm.encStart = t0, t0
	f := s.f
	lc := f.UNet.OutChannels()
	lh, lw := req.Height/8, req.Width/8
	size := lc * lh * lw

	// encode: [negative, prompt] in one batch-2 call
	ids := append(f.Tokenizer.Encode(req.NegativePrompt), f.Tokenizer.Encode(req.Prompt)...)
	emb, err := s.enc.Encode(ctx, ids, 2)
	if err != nil {
		return nil, tm, err
	}
	gen, err := rng.New(req.Generator, uint64(req.Seed))
	if err != nil {
		return nil, tm, err
	}
	name := req.Scheduler
	if name == "" {
		name = f.Scheduler.ClassName()
	}
	sch, err := scheduler.New(name, f.Scheduler, scheduler.Options{Steps: req.Steps, Size: size, Noise: gen})
	if err != nil {
		return nil, tm, err
	}
	lat := make([]float32, size)
	gen.Randn(lat)
	sigma := float32(sch.InitNoiseSigma())
	for i := range lat {
		lat[i] *= sigma
	}
	tm.encEnd = time.Now()

	// denoise: classifier-free guidance as one batch-2 call a step
	tm.denStart = tm.encEnd
	x := make([]float32, 2*size)
	g := float32(*req.GuidanceScale)
	for i, t := range sch.Timesteps() {
		sch.ScaleModelInput(x[:size], lat, i)
		copy(x[size:], x[:size])
		sample := tensor.New(tensor.WithShape(2, lc, lh, lw), tensor.WithBacking(x))
		pred, err := s.den.Predict(ctx, sample, []float64{t}, emb)
		if err != nil {
			return nil, tm, err
		}
		e := pred.Data().([]float32)
		u, c := e[:size], e[size:2*size]
		for k, v := range u {
			u[k] = v + float32(g*(c[k]-v))
		}
		if err := sch.Step(u, lat, i); err != nil {
			return nil, tm, err
		}
	}
	tm.denEnd = time.Now()

	// decode
	tm.decStart = tm.denEnd
	inv := float32(1 / f.ScalingFactor)
	for k, v := range lat {
		lat[k] = inv * v
	}
	px, err := s.dec.Decode(ctx, tensor.New(tensor.WithShape(1, lc, lh, lw), tensor.WithBacking(lat)))
	if err != nil {
		return nil, tm, err
	}
	d := px.Data().([]float32)
	h, w := req.Height, req.Width
	if len(d) != 3*h*w {
		return nil, tm, fmt.Errorf("bench: vae decoder returned %d values, want %d", len(d), 3*h*w)
	}
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for ch := range 3 {
		for i, v := range d[ch*h*w : (ch+1)*h*w] {
			v = min(max(v/2+0.5, 0), 1)
			img.Pix[i*4+ch] = uint8(math.RoundToEven(float64(v * 255)))
		}
	}
	for i := range h * w {
		img.Pix[i*4+3] = 255
	}
	tm.decEnd = time.Now()
	tm.done = tm.decEnd
	tm.steps = len(sch.Timesteps()) // UNet calls, as the engine counts them
	tm.batch = 1
	return img, tm, nil
}
