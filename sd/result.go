package sd

import (
	"context"
	"fmt"
	"image"
	"io"
	"sync"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
)

// Result is a finished request. It belongs to the caller.
type Result struct {
	// Images holds one *image.NRGBA per image, in seed order.
	Images []image.Image
	// Pixels holds the same images before rounding to 8 bits, for callers
	// that want the exact values (parity checks, HDR encoders): a
	// gorgonia.org/tensor [images, height, width, 3] float32 tensor with
	// values in [0, 1], row-major, as the engine's stages pass it. Most
	// programs need only Images.
	Pixels *tensor.Dense
	// Seeds holds the seed of each image.
	Seeds []int64
	// Infotexts holds each image's AUTOMATIC1111 "parameters" text
	// (Infotext), which EncodePNG stores in the PNG.
	Infotexts []string
	// Request is the request as resolved: defaults filled in, the random
	// seed picked.
	Request Request
	// Metrics are the request's timings.
	Metrics RequestMetrics
}

// EncodePNG writes image i of r as PNG with its generation parameters
// (r.Infotexts[i]) embedded, as AUTOMATIC1111 does.
func (r *Result) EncodePNG(w io.Writer, i int) error {
	if i < 0 || i >= len(r.Images) {
		return fmt.Errorf("sd: image %d of a result with %d", i, len(r.Images))
	}
	return EncodePNG(w, r.Images[i], r.Infotexts[i])
}

// Progress is one event of a request's progress.
type Progress struct {
	Step, Total int           // denoising steps (UNet calls) done, and in all
	Elapsed     time.Duration // since Submit
	Preview     image.Image   // a preview of the first image's latents, when Request.Preview asks for it: the cheap latent-resolution map, or with WithTAESD its newest full-size decode
}

// RequestMetrics are one request's timings. Each stage's span starts when
// the previous one ends plus the stage's queue wait, so a timeline can be
// drawn from Submitted and the durations.
type RequestMetrics struct {
	Submitted    time.Time
	EncodeQueue  time.Duration // Submit to the start of encoding
	Encode       time.Duration
	EncodeModel  time.Duration // inside the text encoder (and VAE encoder)
	DenoiseQueue time.Duration // end of encoding to the start of denoising
	Denoise      time.Duration
	DenoiseModel time.Duration // inside UNet calls
	DecodeQueue  time.Duration // end of denoising to the start of decoding
	Decode       time.Duration
	DecodeModel  time.Duration // inside the VAE decoder
	Total        time.Duration // Submit to result
	Steps        int           // UNet calls made
	// ShallowSteps counts the UNet calls that ran step caching's shallow
	// model (WithStepCache); 0 without it, and for requests with
	// per-request LoRAs, which run the full UNet every step.
	ShallowSteps int
	BatchSize    int // requests that shared the UNet calls
}

// ModelTime is the time spent inside model calls.
func (m RequestMetrics) ModelTime() time.Duration {
	return pipeline.RequestMetrics(m).ModelTime()
}

// StepsPerSecond is the denoise stage's rate.
func (m RequestMetrics) StepsPerSecond() float64 {
	return pipeline.RequestMetrics(m).StepsPerSecond()
}

// Metrics are a Model's counters since Open.
type Metrics struct {
	Submitted, Rejected     int64 // accepted requests; requests refused as invalid
	Completed, Failed       int64
	Canceled                int64         // included in Failed
	InFlight                int64         // accepted and not yet finished
	Images                  int64         // images produced
	UNetCalls               int64         // UNet calls
	UNetItems               int64         // batch items over all UNet calls
	UNetTime                time.Duration // inside UNet calls
	BatchSizes              map[int]int64 // UNet batch size → calls
	Encode, Denoise, Decode time.Duration // busy time of each stage, over completed requests
	EncodeModel             time.Duration
	DenoiseModel            time.Duration
	DecodeModel             time.Duration
	QueueWait               time.Duration // time completed requests spent waiting between stages
}

// Handle is a submitted request. Its methods are safe for concurrent use.
type Handle struct {
	h     *pipeline.Handle
	req   Request     // the caller's request
	model string      // for the infotexts
	m     *Model      // for the infotexts' Lora hashes
	inp   *inpaintJob // the Mask's overlay and crop, or nil

	progressOnce sync.Once
	progress     chan Progress

	resultOnce sync.Once
	res        *Result
}

// ID returns the request's number, unique within the Model.
func (h *Handle) ID() uint64 { return h.h.ID() }

// Request returns the request as resolved (its Seed is the one used).
func (h *Handle) Request() Request { return h.req.resolved(h.h.Request()) }

// Progress returns the request's progress events: one after each
// denoising step. The channel is closed when the request finishes; events
// nobody reads are dropped, never blocking the engine.
func (h *Handle) Progress() <-chan Progress {
	h.progressOnce.Do(func() {
		in := h.h.Progress()
		h.progress = make(chan Progress, cap(in))
		go func() { // ends when the request does: the engine closes in
			defer close(h.progress)
			for ev := range in {
				select {
				case h.progress <- Progress(ev):
				default:
				}
			}
		}()
	})
	return h.progress
}

// Cancel cancels the request; Wait then returns an error matching
// context.Canceled.
func (h *Handle) Cancel() { h.h.Cancel() }

// Done returns a channel that is closed when the result is ready.
func (h *Handle) Done() <-chan struct{} { return h.h.Done() }

// Wait waits for the result, or for ctx to end (which does not cancel the
// request: use Cancel or the Submit context for that). A canceled request
// returns at once. A failed request's error matches ErrNaN for a model
// output that is not finite, ErrClosed when the Model was closed under it,
// and context.Canceled or context.DeadlineExceeded when its context ended.
func (h *Handle) Wait(ctx context.Context) (*Result, error) {
	res, err := h.h.Wait(ctx)
	if err != nil {
		return nil, engineError(err)
	}
	h.resultOnce.Do(func() { h.res = h.result(res) })
	return h.res, nil
}

// result converts the engine's result, adding the infotexts.
func (h *Handle) result(res *pipeline.Result) *Result {
	h.inp.finish(res)
	r := &Result{
		Images:  res.Images,
		Pixels:  res.Pixels,
		Seeds:   res.Seeds,
		Request: h.req.resolved(res.Request),
		Metrics: RequestMetrics(res.Metrics),
	}
	loras := h.m.LoRAHashes(r.Request)
	for _, seed := range res.Seeds {
		r.Infotexts = append(r.Infotexts, infotext(r.Request, seed, h.model, loras))
	}
	return r
}
