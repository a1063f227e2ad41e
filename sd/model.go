package sd

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/pipeline"
)

// Request, Result, Handle and Progress are the pipeline's, named here so
// that most programs need only this package.
type (
	Request  = pipeline.Request
	Result   = pipeline.Result
	Handle   = pipeline.Handle
	Progress = pipeline.Progress
	Metrics  = pipeline.Metrics
)

// Stage names one stage of the engine, for WithWorkers.
type Stage int

// The engine's stages.
const (
	Encode  Stage = iota // tokenizer + text encoder (+ VAE encoder for img2img)
	Denoise              // scheduler + UNet
	Decode               // VAE decoder
)

func (s Stage) String() string {
	switch s {
	case Encode:
		return "encode"
	case Denoise:
		return "denoise"
	case Decode:
		return "decode"
	}
	return fmt.Sprintf("Stage(%d)", int(s))
}

// Mode is a performance hint, like OpenVINO's: it picks worker counts and
// thread budgets that explicit options then override.
type Mode int

const (
	// Latency runs one request at a time through each stage with every
	// core on each model call (the default).
	Latency Mode = iota
	// Throughput keeps several requests in flight: two denoise workers
	// that share the cores, so stages and requests overlap.
	Throughput
)

func (m Mode) String() string {
	switch m {
	case Latency:
		return "latency"
	case Throughput:
		return "throughput"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// WithWorkers sets the number of workers of a stage (default 1).
func WithWorkers(s Stage, n int) Option {
	return func(c *config) {
		switch s {
		case Encode:
			c.pipe.EncodeWorkers = n
		case Denoise:
			c.pipe.DenoiseWorkers = n
		case Decode:
			c.pipe.DecodeWorkers = n
		default:
			c.pipe.EncodeWorkers = -1 << 30 // reported by checkEngine
		}
	}
}

// WithBatching turns on dynamic batching: up to maxImages images of
// compatible requests (same size, steps, scheduler and guidance) share one
// UNet call; the denoise stage waits up to wait for more once it has one.
// The images do not change because of it.
func WithBatching(maxImages int, wait time.Duration) Option {
	return func(c *config) { c.pipe.MaxBatch, c.pipe.MaxBatchWait = maxImages, wait }
}

// WithMode sets the performance mode (default Latency).
func WithMode(m Mode) Option { return func(c *config) { c.mode = m } }

// WithDefaultSize sets the size of requests that leave Width and Height 0
// (default: the UNet's sample_size × 8 from unet/config.json, else 512).
func WithDefaultSize(width, height int) Option {
	return func(c *config) { c.pipe.DefaultWidth, c.pipe.DefaultHeight = width, height }
}

// WithDefaultGuidance sets the guidance scale of requests that leave
// GuidanceScale 0 (default pipeline.DefaultGuidance, 7.5). The embedded
// default model wants models.DefaultGuidance.
func WithDefaultGuidance(g float64) Option {
	return func(c *config) { c.pipe.DefaultGuidance = g }
}

func (c *config) checkEngine() []error {
	var errs []error
	p := c.pipe
	if p.EncodeWorkers < 0 || p.DenoiseWorkers < 0 || p.DecodeWorkers < 0 {
		errs = append(errs, fmt.Errorf("sd: WithWorkers: unknown stage or negative count"))
	}
	if p.MaxBatch < 0 || p.MaxBatchWait < 0 {
		errs = append(errs, fmt.Errorf("sd: WithBatching: negative size %d or wait %v", p.MaxBatch, p.MaxBatchWait))
	}
	if c.mode != Latency && c.mode != Throughput {
		errs = append(errs, fmt.Errorf("sd: unknown mode %d", int(c.mode)))
	}
	if g := p.DefaultGuidance; math.IsNaN(g) || g < 0 || g > pipeline.MaxGuidance {
		errs = append(errs, fmt.Errorf("sd: WithDefaultGuidance: %v is not a number in [0, %d]", g, pipeline.MaxGuidance))
	}
	if p.DefaultWidth < 0 || p.DefaultHeight < 0 || p.DefaultWidth%8 != 0 || p.DefaultHeight%8 != 0 {
		errs = append(errs, fmt.Errorf("sd: WithDefaultSize: %dx%d is not a multiple of 8", p.DefaultWidth, p.DefaultHeight))
	}
	return errs
}

// applyMode fills the settings the mode decides and no option set.
func (c *config) applyMode() {
	if c.mode != Throughput {
		return
	}
	if c.pipe.DenoiseWorkers == 0 {
		c.pipe.DenoiseWorkers = 2
	}
	if c.pipe.EncodeWorkers == 0 {
		c.pipe.EncodeWorkers = 1
	}
	if c.pipe.DecodeWorkers == 0 {
		c.pipe.DecodeWorkers = 1
	}
	// split the cores between the calls that run at once (the denoise
	// workers' UNet calls, and encoding and decoding beside them), unless
	// the caller chose a component's threads: all cores for every session
	// oversubscribes them (measured by the bench: a VAE decode took 1.8×
	// as long beside two UNet calls)
	share := max(1, runtime.NumCPU()/c.pipe.DenoiseWorkers)
	for _, k := range components {
		if p := c.comp(k); p.threads == 0 {
			p.threads = share
		}
	}
}

// Model is an opened model folder with its running engine. It is safe for
// concurrent use; the caller must Close it.
type Model struct {
	f    *Folder
	rt   interface{ Close() error } // a checkpoint's runtime components instead of f (checkpoint.go)
	p    *pipeline.Pipeline
	once sync.Once
	err  error
}

// Open opens the model folder at dir (see OpenFolder) and starts the
// engine on it. The caller must Close the Model.
func Open(ctx context.Context, dir string, opts ...Option) (*Model, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	cfg.applyMode()
	dir, name, m, err := resolveModel(ctx, dir, cfg) // single-file checkpoints (checkpoint.go)
	if m != nil || err != nil {
		return m, err
	}
	f, err := openFolder(ctx, dir, cfg)
	if err != nil {
		return nil, err
	}
	po := cfg.pipe
	po.Logger = cfg.logger
	if po.DefaultWidth == 0 && po.DefaultHeight == 0 {
		if s := f.sampleSize; s > 0 {
			po.DefaultWidth, po.DefaultHeight = 8*s, 8*s
		}
	}
	c := pipeline.Components{
		Tokenizer:           f.Tokenizer,
		TextEncoder:         f.TextEncoder,
		UNet:                f.UNet,
		VAEDecoder:          f.VAEDecoder,
		Scheduler:           f.Scheduler,
		ScalingFactor:       f.ScalingFactor,
		LatentChannels:      f.UNet.OutChannels(),
		UNetTimestepPerItem: f.UNet.PerItemTimesteps(),
		ModelName:           name,
	}
	if f.VAEEncoder != nil {
		c.VAEEncoder = f.VAEEncoder
	}
	p, err := pipeline.New(c, po)
	if err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return &Model{f: f, p: p}, nil
}

// Folder returns the opened folder and its models. For a single-file
// checkpoint opened with WithLoRADir or WithEmbeddingsDir, the folder's
// models are nil: other sessions run it.
func (m *Model) Folder() *Folder { return m.f }

// Pipeline returns the running engine.
func (m *Model) Pipeline() *pipeline.Pipeline { return m.p }

// Submit queues a request; see pipeline.Pipeline.Submit.
func (m *Model) Submit(ctx context.Context, req Request) (*Handle, error) {
	return m.p.Submit(ctx, req)
}

// Generate runs a request and waits for its result.
func (m *Model) Generate(ctx context.Context, req Request) (*Result, error) {
	return m.p.Generate(ctx, req)
}

// Metrics returns the engine's counters.
func (m *Model) Metrics() Metrics { return m.p.Metrics() }

// Close cancels the requests in flight, stops the engine, then closes the
// models. It is idempotent.
func (m *Model) Close() error {
	m.once.Do(func() {
		m.err = errors.Join(m.p.Close(), m.f.Close())
		if m.rt != nil {
			m.err = errors.Join(m.err, m.rt.Close())
		}
	})
	return m.err
}

// Shutdown lets the requests in flight finish (cancelling them when ctx
// ends), then closes the models.
func (m *Model) Shutdown(ctx context.Context) error {
	err := m.p.Shutdown(ctx)
	return errors.Join(err, m.Close())
}
