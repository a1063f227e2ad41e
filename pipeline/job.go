package pipeline

import (
	"context"
	"errors"
	"fmt"
	"image"
	"sync/atomic"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/scheduler"
)

// job owns everything request-scoped. A stage owns the job while it works
// on it; sending it to the next stage hands over ownership.
type job struct {
	*plan     // the request, resolved at Submit
	id        uint64
	ctx       context.Context
	cancel    context.CancelCauseFunc
	stopAbort func() bool

	// encode results
	seq, hidden  int
	cond, uncond []float32 // [seq, hidden] each
	// with added conditioning (Components.Added): the pooled embeddings
	// of the prompt and the negative prompt, [width] each
	pooled, uncondPooled []float32

	// per image
	size       int // floats in one image's latents
	items      []*item
	latH, latW int

	inp *inpainting // the mask's latents, nil without a mask on a 4-channel UNet

	interrupted atomic.Bool // Handle.Interrupt: decode the latents as they are
	// decodedPreview is the PreviewDecoder's latest preview (preview.go)
	decodedPreview atomic.Pointer[image.NRGBA]

	progress chan Progress
	done     chan struct{}
	out      outcome
	metrics  RequestMetrics // model times, steps, batch size; the rest comes from at
	at       stageTimes
}

// stageTimes records when the job entered and left each stage; the
// request's metrics are computed from them.
type stageTimes struct {
	submitted                time.Time
	encodeStart, encodeEnd   time.Time
	denoiseStart, denoiseEnd time.Time
	decodeStart, decodeEnd   time.Time
}

// timings returns the job's metrics: its model times and counts, and the
// spans of its stages as recorded.
func (j *job) timings() RequestMetrics {
	m, a := j.metrics, j.at
	m.Submitted = a.submitted
	m.EncodeQueue, m.Encode = a.encodeStart.Sub(a.submitted), a.encodeEnd.Sub(a.encodeStart)
	m.DenoiseQueue, m.Denoise = a.denoiseStart.Sub(a.encodeEnd), a.denoiseEnd.Sub(a.denoiseStart)
	m.DecodeQueue, m.Decode = a.decodeStart.Sub(a.denoiseEnd), a.decodeEnd.Sub(a.decodeStart)
	m.Total = a.decodeEnd.Sub(a.submitted)
	return m
}

// item is one image of a job.
type item struct {
	seed    int64
	gen     rng.Source
	sched   scheduler.Scheduler
	latents []float32
	noise   []float32  // the initial noise, kept for blending a mask back
	deep    *deepCache // step caching's features (stepcache.go), nil before the first full call
}

func (p *Pipeline) newJob(ctx context.Context, pl *plan) *job {
	jctx, cancel := context.WithCancelCause(ctx)
	r := &pl.req
	j := &job{
		plan:     pl,
		id:       p.nextID.Add(1),
		ctx:      jctx,
		cancel:   cancel,
		latH:     r.Height / 8,
		latW:     r.Width / 8,
		progress: make(chan Progress, len(pl.steps)+1), // one event per model call
		done:     make(chan struct{}),
		at:       stageTimes{submitted: time.Now()},
	}
	j.size = p.c.LatentChannels * j.latH * j.latW
	j.stopAbort = context.AfterFunc(p.abort, func() { cancel(ErrClosed) })
	return j
}

// release frees a job that was never accepted.
func (j *job) release() {
	j.stopAbort()
	j.cancel(context.Canceled)
}

// err returns the job's context error, preferring its cause.
func (j *job) err() error {
	if j.ctx.Err() == nil {
		return nil
	}
	cause := context.Cause(j.ctx)
	if errors.Is(cause, ErrClosed) {
		return fmt.Errorf("%w: %w", ErrClosed, j.ctx.Err())
	}
	return j.ctx.Err()
}

// fail finishes the job with err from stage.
func (j *job) fail(stage string, err error) {
	if ce := j.err(); ce != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrClosed)) {
		err = ce // report cancellation plainly, with its cause
	} else {
		err = &StageError{Stage: stage, Err: err}
	}
	j.finish(outcome{err: err})
}

// finish records the outcome and wakes waiters. It is called exactly once,
// by the stage that owns the job.
func (j *job) finish(o outcome) {
	j.out = o
	j.stopAbort()
	close(j.progress)
	close(j.done)
	j.cancel(context.Canceled) // frees the context's resources; after done, which Wait relies on
}

// emit sends a progress event without ever blocking.
func (j *job) emit(ev Progress) {
	select {
	case j.progress <- ev:
	default:
	}
}

// stepState is what Request.OnStep sees after model call i at timestep t.
func (j *job) stepState(i int, t float64) Step {
	n := len(j.items)
	lat := make([]float32, 0, n*j.size)
	for _, it := range j.items {
		lat = append(lat, it.latents...)
	}
	rows := 1
	emb := make([]float32, 0, 2*len(j.cond))
	if j.guided {
		rows = 2
		emb = append(emb, j.uncond...)
	}
	emb = append(emb, j.cond...)
	return Step{
		Step: i + 1, Total: len(j.steps), Timestep: t,
		Latents:        tensor.New(tensor.WithShape(n, len(lat)/(n*j.latH*j.latW), j.latH, j.latW), tensor.WithBacking(lat)),
		TextEmbeddings: tensor.New(tensor.WithShape(rows, j.seq, j.hidden), tensor.WithBacking(emb)),
	}
}
