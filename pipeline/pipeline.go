package pipeline

import (
	"context"
	"errors"
	"fmt"
	"image"
	"log/slog"
	"math"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"gorgonia.org/tensor"
)

// ErrClosed is returned by Submit after Close, and is the cause of jobs
// canceled by Close.
var ErrClosed = errors.New("pipeline: closed")

// StageError reports the stage where a request failed.
type StageError struct {
	Stage string // "encode", "denoise" or "decode"
	Err   error
}

func (e *StageError) Error() string { return fmt.Sprintf("pipeline: %s: %v", e.Stage, e.Err) }

// Unwrap returns the underlying error.
func (e *StageError) Unwrap() error { return e.Err }

// Options configures a Pipeline. The zero value means one worker per stage,
// no dynamic batching, and 512×512 images by default.
type Options struct {
	EncodeWorkers  int // 0 means 1
	DenoiseWorkers int // 0 means 1
	DecodeWorkers  int // 0 means 1
	// MaxBatch is the most images that one UNet call may hold across
	// requests (dynamic batching); 0 or 1 disables it. Requests share a
	// call only when their schedules, sizes and guidance agree.
	MaxBatch int
	// MaxBatchWait is how long the denoise stage waits for more requests
	// to fill a batch once it has one.
	MaxBatchWait time.Duration
	// DefaultWidth and DefaultHeight replace a Request's zero size; 0 means
	// DefaultSize.
	DefaultWidth, DefaultHeight int
	// DefaultGuidance replaces a Request's nil GuidanceScale; 0 means
	// the package's DefaultGuidance (7.5, diffusers' default), and 1 (or
	// less) a default without guidance. A model trained for another scale
	// says so in its sdpipe.json, which sd reads.
	DefaultGuidance float64
	// PreviewEvery is how many denoising steps apart the PreviewDecoder
	// renders a request's preview (Components.PreviewDecoder); 0 means
	// DefaultPreviewEvery.
	PreviewEvery int
	Logger       *slog.Logger // nil discards
}

// Pipeline is the staged engine. It is safe for concurrent use; the caller
// must Close it, which does not close the Components.
type Pipeline struct {
	c    Components
	opts Options
	log  *slog.Logger

	encodeIn  chan *job
	denoiseIn chan *job
	decodeIn  chan *job
	previewIn chan previewTask // to the preview worker (preview.go), nil without a PreviewDecoder

	mu      sync.RWMutex // Submit holds it shared while sending; Close exclusive
	closing chan struct{}
	abort   context.Context // canceled by Close to stop jobs in flight
	cancel  context.CancelFunc
	done    chan struct{} // closed when every stage has returned
	once    sync.Once

	nextID atomic.Uint64
	m      metricsCollector

	// test hook, called from the encode stage when set
	onEncoded func(j *job)
}

// New starts a pipeline on c. The stages' goroutines run until Close.
func New(c Components, o Options) (*Pipeline, error) {
	if err := c.check(); err != nil {
		return nil, err
	}
	if o.EncodeWorkers < 0 || o.DenoiseWorkers < 0 || o.DecodeWorkers < 0 || o.MaxBatch < 0 || o.MaxBatchWait < 0 || o.PreviewEvery < 0 {
		return nil, fmt.Errorf("pipeline: negative option in %+v", o)
	}
	o.EncodeWorkers = max(o.EncodeWorkers, 1)
	o.DenoiseWorkers = max(o.DenoiseWorkers, 1)
	o.DecodeWorkers = max(o.DecodeWorkers, 1)
	o.MaxBatch = max(o.MaxBatch, 1)
	if g := o.DefaultGuidance; math.IsNaN(g) || g < 0 || g > MaxGuidance {
		return nil, fmt.Errorf("pipeline: DefaultGuidance %v is not a number in [0, %d]", g, MaxGuidance)
	}
	if o.DefaultGuidance == 0 {
		o.DefaultGuidance = DefaultGuidance
	}
	if o.PreviewEvery == 0 {
		o.PreviewEvery = DefaultPreviewEvery
	}
	if o.DefaultWidth == 0 {
		o.DefaultWidth = DefaultSize
	}
	if o.DefaultHeight == 0 {
		o.DefaultHeight = DefaultSize
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &Pipeline{
		c: c, opts: o, log: log,
		encodeIn:  make(chan *job),
		denoiseIn: make(chan *job, 1),
		decodeIn:  make(chan *job, 1),
		previewIn: newPreviewQueue(c),
		closing:   make(chan struct{}),
		done:      make(chan struct{}),
	}
	p.abort, p.cancel = context.WithCancel(context.Background())
	p.m.init()
	var encodeWG, denoiseWG, decodeWG sync.WaitGroup
	for range o.EncodeWorkers {
		encodeWG.Go(func() { p.stage("encode", p.encodeIn, p.denoiseIn, p.encode) })
	}
	for range o.DenoiseWorkers {
		denoiseWG.Go(func() { p.denoiseStage(p.denoiseIn, p.decodeIn) })
	}
	for range o.DecodeWorkers {
		decodeWG.Go(func() { p.stage("decode", p.decodeIn, nil, p.decode) })
	}
	var previewWG sync.WaitGroup
	if p.previewIn != nil {
		previewWG.Go(p.previewStage)
	}
	go func() { // the sender closes: each stage's out closes after its workers return
		encodeWG.Wait()
		close(p.denoiseIn)
		denoiseWG.Wait()
		close(p.decodeIn)
		if p.previewIn != nil {
			close(p.previewIn)
		}
		decodeWG.Wait()
		previewWG.Wait()
		close(p.done)
	}()
	return p, nil
}

// Progress is one event of a request's progress.
type Progress struct {
	Step, Total int           // denoising steps done and in all
	Elapsed     time.Duration // since Submit
	// Preview is a preview of the first image's latents, when asked for:
	// the PreviewDecoder's latest (Components.PreviewDecoder), else the
	// cheap RGB map at latent resolution.
	Preview image.Image
}

// Result is a finished request.
type Result struct {
	Images  []image.Image // one per image, *image.NRGBA
	Pixels  *tensor.Dense // [images, height, width, 3] float32 in [0, 1], before 8-bit rounding
	Seeds   []int64       // the seed of each image
	Request Request       // the request as resolved (defaults filled in)
	Metrics RequestMetrics
}

type outcome struct {
	res *Result
	err error
}

// Handle is a submitted request. Its methods are safe for concurrent use.
type Handle struct{ j *job }

// ID returns the request's number, unique within the pipeline.
func (h *Handle) ID() uint64 { return h.j.id }

// Request returns the request as resolved (its Seed is the one used).
func (h *Handle) Request() Request { return h.j.req.detached() }

// Progress returns the request's progress events. The channel is closed
// when the request finishes; events nobody reads are dropped, never
// blocking the pipeline.
func (h *Handle) Progress() <-chan Progress { return h.j.progress }

// Cancel cancels the request; Wait then returns context.Canceled.
func (h *Handle) Cancel() { h.j.cancel(context.Canceled) }

// Done returns a channel closed when the result is ready.
func (h *Handle) Done() <-chan struct{} { return h.j.done }

// Wait waits for the result or for ctx to end (which does not cancel the
// request: use Cancel or the Submit context for that).
//
// A canceled request returns at once, even while it still waits between
// stages (the stage that next takes it drops it).
func (h *Handle) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-h.j.done:
		return h.j.out.res, h.j.out.err
	case <-h.j.ctx.Done():
		select {
		case <-h.j.done: // finished: finish cancels the context after closing done
			return h.j.out.res, h.j.out.err
		default:
			return nil, h.j.err()
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Submit validates req and queues it. It blocks until the encode stage
// accepts the request, ctx ends (it then returns ctx's error) or the
// pipeline closes (ErrClosed): there is no unbounded queue. An invalid
// request gets a *RequestError at once. The request runs until it
// finishes, fails, or ctx is canceled.
func (p *Pipeline) Submit(ctx context.Context, req Request) (*Handle, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := p.resolve(req)
	if err != nil {
		p.m.rejected()
		return nil, err
	}
	j := p.newJob(ctx, r)
	p.mu.RLock()
	defer p.mu.RUnlock()
	select {
	case <-p.closing:
		j.release()
		return nil, ErrClosed
	default:
	}
	select {
	case p.encodeIn <- j:
		p.m.accepted()
		return &Handle{j: j}, nil
	case <-ctx.Done():
		j.release()
		return nil, ctx.Err()
	case <-p.closing:
		j.release()
		return nil, ErrClosed
	}
}

// Generate is Submit followed by Wait.
func (p *Pipeline) Generate(ctx context.Context, req Request) (*Result, error) {
	h, err := p.Submit(ctx, req)
	if err != nil {
		return nil, err
	}
	return h.Wait(ctx)
}

// Close stops intake, cancels the requests in flight, waits for every
// stage goroutine to return, and reports nothing left running. It is
// idempotent. Close does not close the Components.
func (p *Pipeline) Close() error {
	p.shutdown(true)
	<-p.done
	return nil
}

// Shutdown stops intake and lets the requests in flight finish; when ctx
// ends first, it cancels them. It returns once every stage has returned.
func (p *Pipeline) Shutdown(ctx context.Context) error {
	p.shutdown(false)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		p.cancel()
		<-p.done
		return ctx.Err()
	}
}

func (p *Pipeline) shutdown(abort bool) {
	if abort {
		p.cancel()
	}
	p.once.Do(func() {
		close(p.closing)
		p.mu.Lock() // waits for Submits in progress to give up
		close(p.encodeIn)
		p.mu.Unlock()
	})
}

// stage runs one worker of a simple stage: fn processes each job, which
// then moves on to out (or is finished when out is nil).
func (p *Pipeline) stage(name string, in <-chan *job, out chan<- *job, fn func(*job) error) {
	for j := range in {
		err := j.ctx.Err()
		if err == nil {
			err = p.guard(name, j, fn)
		}
		if err != nil {
			p.m.failed(err) // counted before the caller can see the error
			j.fail(name, err)
			continue
		}
		if out != nil {
			out <- j
		}
	}
}

// guard runs fn, turning a panic in the project's Go code (a bug) into this
// job's error so the pipeline keeps serving other requests. Panics cannot
// come out of C code, which reports failures as errors.
func (p *Pipeline) guard(stage string, j *job, fn func(*job) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("pipeline: internal error", "stage", stage, "request", j.id, "panic", r, "stack", string(debug.Stack()))
			err = fmt.Errorf("internal error: %v", r)
		}
	}()
	return fn(j)
}
