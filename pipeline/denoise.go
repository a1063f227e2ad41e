package pipeline

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"gorgonia.org/tensor"
)

// denoiseStage runs one denoise worker. With dynamic batching on, it
// gathers compatible jobs that arrive within MaxBatchWait of the first and
// runs them as one batch.
func (p *Pipeline) denoiseStage(in <-chan *job, out chan<- *job) {
	var pending *job
	closed := false
	for {
		j := pending
		pending = nil
		if j == nil {
			if closed {
				return
			}
			var ok bool
			if j, ok = <-in; !ok {
				return
			}
		}
		batch := []*job{j}
		if images := len(j.items); p.opts.MaxBatch > 1 && images < p.opts.MaxBatch && !closed {
			timer := time.NewTimer(p.opts.MaxBatchWait)
		collect:
			for images < p.opts.MaxBatch {
				select {
				case k, ok := <-in:
					if !ok {
						closed = true
						break collect
					}
					if k.ctx.Err() == nil && compatible(j, k) && images+len(k.items) <= p.opts.MaxBatch {
						batch = append(batch, k)
						images += len(k.items)
						continue
					}
					pending = k
					break collect
				case <-timer.C:
					break collect
				}
			}
			timer.Stop()
		}
		for _, k := range p.denoise(batch, out) {
			out <- k
		}
	}
}

// compatible reports whether two jobs can share UNet calls in lockstep.
func compatible(a, b *job) bool {
	return a.size == b.size && a.latH == b.latH && a.guided == b.guided && a.seq == b.seq && a.hidden == b.hidden &&
		slices.Equal(a.steps, b.steps)
}

// denoise runs the denoising loop of a batch of compatible jobs and returns
// the ones that succeeded; the others are finished with their error, and
// the interrupted ones go to out as soon as they stop.
func (p *Pipeline) denoise(batch []*job, out chan<- *job) []*job {
	start := time.Now()
	for _, j := range batch {
		j.at.denoiseStart = start
		j.metrics.BatchSize = len(batch)
	}
	live := batch
	var b *unetBatch
	var model time.Duration // inside UNet calls
	for i, t := range batch[0].steps {
		// drop jobs that were canceled, and pass on the interrupted ones
		kept := live[:0:0]
		for _, j := range live {
			if err := j.err(); err != nil {
				p.finishDenoise(j, err)
				continue
			}
			if j.interrupted.Load() {
				j.metrics.Denoise = time.Since(start)
				j.metrics.Steps = i
				j.metrics.DenoiseModel = model
				out <- j
				continue
			}
			kept = append(kept, j)
		}
		if len(kept) != len(live) || b == nil {
			live = kept
			if len(live) == 0 {
				return nil
			}
			b = p.newUNetBatch(live)
		}
		err := p.guard("denoise", live[0], func(*job) error {
			d, err := p.step(b, i, t)
			model += d
			return err
		})
		if err != nil {
			for _, j := range live {
				if je := j.err(); je != nil {
					err = je
				}
				p.finishDenoise(j, err)
			}
			return nil
		}
		kept = live[:0:0]
		for _, j := range live {
			ev := Progress{Step: i + 1, Total: len(j.steps), Elapsed: time.Since(j.at.submitted)}
			if j.req.Preview {
				ev.Preview = p.stepPreview(j, i+1)
			}
			j.emit(ev)
			if f := j.req.OnStep; f != nil {
				if err := p.guard("denoise", j, func(j *job) error { f(j.stepState(i, t)); return nil }); err != nil {
					p.finishDenoise(j, fmt.Errorf("OnStep: %w", err))
					b = nil // rebuilt without j
					continue
				}
			}
			kept = append(kept, j)
		}
		live = kept
	}
	now := time.Now()
	for _, j := range live {
		j.at.denoiseEnd = now
		j.metrics.Steps = len(j.steps)
		j.metrics.DenoiseModel = model
	}
	return live
}

func (p *Pipeline) finishDenoise(j *job, err error) {
	p.m.failed(err) // counted before the caller can see the error, as completed is
	j.fail("denoise", err)
}

// unetBatch is the buffers of one lockstep batch: sample and embeddings in
// the order [uncond of every image..., cond of every image...] when
// guidance is on, as diffusers batches [uncond, text].
type unetBatch struct {
	jobs   []*job
	items  []*item
	job    []*job // job of each item
	x      []float32
	x9     []float32 // an inpainting UNet's sample: x with the mask channels
	cond   *tensor.Dense
	guided bool
	// added conditioning (Components.Added), in the rows' order; nil
	// without it
	textEmbeds, timeIDs *tensor.Dense
}

func (p *Pipeline) newUNetBatch(jobs []*job) *unetBatch {
	b := &unetBatch{jobs: jobs, guided: jobs[0].guided}
	for _, j := range jobs {
		for _, it := range j.items {
			b.items = append(b.items, it)
			b.job = append(b.job, j)
		}
	}
	n, size := len(b.items), jobs[0].size
	seq, hidden := jobs[0].seq, jobs[0].hidden
	k := 1
	if b.guided {
		k = 2
	}
	b.x = make([]float32, k*n*size)
	e := make([]float32, 0, k*n*seq*hidden)
	if b.guided {
		for m := range b.items {
			e = append(e, b.job[m].uncond...)
		}
	}
	for m := range b.items {
		e = append(e, b.job[m].cond...)
	}
	b.cond = tensor.New(tensor.WithShape(k*n, seq, hidden), tensor.WithBacking(e))
	if p.c.Added {
		b.added(k)
	}
	return b
}

// added builds the batch's pooled embeddings and time ids, k rows per
// image (uncond rows first when guided), in the order of the samples.
func (b *unetBatch) added(k int) {
	n := len(b.items)
	var pe, ti []float32
	if b.guided {
		for m := range b.items {
			pe = append(pe, b.job[m].uncondPooled...)
		}
	}
	for m := range b.items {
		pe = append(pe, b.job[m].pooled...)
	}
	for range k {
		for m := range b.items {
			ti = append(ti, timeIDs(&b.job[m].req)...)
		}
	}
	b.textEmbeds = tensor.New(tensor.WithShape(k*n, len(pe)/(k*n)), tensor.WithBacking(pe))
	b.timeIDs = tensor.New(tensor.WithShape(k*n, len(ti)/(k*n)), tensor.WithBacking(ti))
}

// guidanceRows is a latent consistency UNet's timestep_cond for the batch:
// each item's guidance embedding.
func (p *Pipeline) guidanceRows(b *unetBatch) *tensor.Dense {
	dim := p.c.GuidanceEmbedding
	d := make([]float32, 0, len(b.items)*dim)
	for m := range b.items {
		d = append(d, p.c.Embed(*b.job[m].req.GuidanceScale, dim, 1).Data().([]float32)...)
	}
	return tensor.New(tensor.WithShape(len(b.items), dim), tensor.WithBacking(d))
}

// callContext is canceled when every job of the batch is: one canceled
// request never stops a call that others still need.
func callContext(jobs []*job) (context.Context, context.CancelFunc) {
	if len(jobs) == 1 {
		return jobs[0].ctx, func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var left = make(chan struct{}, len(jobs))
	stops := make([]func() bool, len(jobs))
	for i, j := range jobs {
		stops[i] = context.AfterFunc(j.ctx, func() {
			left <- struct{}{}
			if len(left) == len(jobs) {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, s := range stops {
			s()
		}
		cancel()
	}
}

// step runs model call i at timestep t for the batch and advances every
// item's scheduler. It returns the time spent in the UNet.
func (p *Pipeline) step(b *unetBatch, i int, t float64) (time.Duration, error) {
	n, size := len(b.items), b.jobs[0].size
	for m, it := range b.items {
		it.sched.ScaleModelInput(b.x[m*size:(m+1)*size], it.latents, i)
		if b.guided {
			copy(b.x[(n+m)*size:(n+m+1)*size], b.x[m*size:(m+1)*size])
		}
	}
	k := len(b.x) / (n * size)
	j0 := b.jobs[0]
	sample := p.unetSample(b, k)
	ctx, cancel := callContext(b.jobs)
	t0 := time.Now()
	var pred *tensor.Dense
	var err error
	if sc, every := p.stepCacher(b); sc != nil {
		pred, err = p.cachedPredict(ctx, sc, every, b, sample, k, i, t)
	} else if b.textEmbeds != nil {
		pred, err = p.c.UNet.(AddedDenoiser).PredictAdded(ctx, sample, []float64{t}, b.cond, b.textEmbeds, b.timeIDs)
	} else if p.c.GuidanceEmbedding > 0 {
		pred, err = p.c.UNet.(CondDenoiser).PredictCond(ctx, sample, []float64{t}, b.cond, p.guidanceRows(b))
	} else if rows := b.loraRows(); rows != nil {
		pred, err = p.c.UNet.(LoRADenoiser).PredictLoRA(ctx, sample, []float64{t}, b.cond, rows)
	} else {
		pred, err = p.c.UNet.Predict(ctx, sample, []float64{t}, b.cond)
	}
	cancel()
	d := time.Since(t0)
	p.m.unetCall(k*n, d)
	if err != nil {
		return d, fmt.Errorf("step %d/%d: %w", i+1, len(j0.steps), err)
	}
	e := pred.Data().([]float32)
	if len(e) != len(b.x) {
		return d, fmt.Errorf("step %d/%d: unet returned %d values, want %d", i+1, len(j0.steps), len(e), len(b.x))
	}
	for m, it := range b.items {
		var eps []float32
		if b.guided {
			u, c := e[m*size:(m+1)*size], e[(n+m)*size:(n+m+1)*size]
			guide(u, c, float32(*b.job[m].req.GuidanceScale))
			if r := b.job[m].req.GuidanceRescale; r > 0 {
				rescale(u, c, r)
			}
			eps = u
		} else {
			eps = e[m*size : (m+1)*size]
		}
		if err := it.sched.Step(eps, it.latents, i); err != nil {
			return d, fmt.Errorf("step %d/%d: %w", i+1, len(j0.steps), err)
		}
		if inp := b.job[m].inp; inp != nil && inp.init != nil {
			inp.blend(it, i)
		}
	}
	return d, nil
}

// guide writes uncond + g·(cond − uncond) into uncond, in float32 as
// diffusers' numpy arithmetic does.
func guide(uncond, cond []float32, g float32) {
	for i, u := range uncond {
		uncond[i] = u + float32(g*(cond[i]-u)) // the conversion forbids a fused multiply-add
	}
}

// rescale applies diffusers' rescale_noise_cfg to the guided prediction in
// cfg, given the text prediction: cfg·(std(text)/std(cfg)) blended with cfg
// by factor r.
func rescale(cfg, text []float32, r float64) {
	st, sc := std(text), std(cfg)
	if sc == 0 {
		return
	}
	f := st / sc
	for i, v := range cfg {
		cfg[i] = float32(r*(float64(v)*f) + (1-r)*float64(v))
	}
}

func std(x []float32) float64 {
	var s, s2 float64
	for _, v := range x {
		s += float64(v)
	}
	mean := s / float64(len(x))
	for _, v := range x {
		d := float64(v) - mean
		s2 += d * d
	}
	if len(x) < 2 {
		return 0
	}
	return math.Sqrt(s2 / float64(len(x)-1)) // torch.std is unbiased
}
