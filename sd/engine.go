package sd

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"time"

	"github.com/sdpipe/sdpipe/pipeline"
)

// An EngineOption configures how the engine runs the models: workers per
// stage, dynamic batching, the performance mode, and the defaults of
// requests. Only Open takes it.
type EngineOption func(*engineConfig)

func (o EngineOption) apply(c *config) { o(&c.engine) }

// engineConfig is what the EngineOptions record.
type engineConfig struct {
	mode      Mode
	workers   Workers
	maxBatch  int
	batchWait time.Duration
	defaults  Defaults
	memory    memoryConfig // memory admission (memory.go)
	taesd     taesdConfig  // TAESD previews and fast decoding (taesd.go)
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

// Workers are the number of goroutines of each of the engine's stages; 0
// means one (or what the Mode picks).
type Workers struct {
	Encode  int // tokenizer + text encoder (+ VAE encoder for img2img)
	Denoise int // scheduler + UNet
	Decode  int // VAE decoder
}

// Defaults are what a request that leaves a field zero gets.
type Defaults struct {
	// Width and Height are the image size in pixels, multiples of 8.
	Width  int `json:"width"`
	Height int `json:"height"`
	// GuidanceScale is the classifier-free guidance scale. In WithDefaults
	// 0 leaves the model's default; 1 (or less) is a default without
	// guidance, as SD-Turbo and LCM models want. In sdpipe.json an explicit
	// "guidance_scale": 0 means no guidance too (it reads as 1, which
	// behaves the same); leaving the key out leaves diffusers' 7.5.
	GuidanceScale float64 `json:"guidance_scale"`
}

// UnmarshalJSON reads Defaults, telling an explicit "guidance_scale": 0
// (no guidance, as diffusers' guidance_scale=0.0) from a missing one.
func (d *Defaults) UnmarshalJSON(b []byte) error {
	type plain Defaults
	var v struct {
		plain
		GuidanceScale *float64 `json:"guidance_scale"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*d = Defaults(v.plain)
	if g := v.GuidanceScale; g != nil {
		d.GuidanceScale = *g
		if *g == 0 {
			d.GuidanceScale = 1 // off, like 0; 0 here would mean unset
		}
	}
	return nil
}

// WithMode sets the performance mode (default Latency).
func WithMode(m Mode) EngineOption { return func(c *engineConfig) { c.mode = m } }

// WithWorkers sets the number of workers of each stage (default one each).
func WithWorkers(w Workers) EngineOption { return func(c *engineConfig) { c.workers = w } }

// WithBatching turns on dynamic batching: up to maxImages images of
// compatible requests (same size, steps, scheduler and guidance) share one
// UNet call; the denoise stage waits up to wait for more once it has one.
// The images do not change because of it.
func WithBatching(maxImages int, wait time.Duration) EngineOption {
	return func(c *engineConfig) { c.maxBatch, c.batchWait = maxImages, wait }
}

// WithDefaults replaces the model's defaults (Model.Defaults, from its
// sdpipe.json or diffusers') with the non-zero fields of d.
func WithDefaults(d Defaults) EngineOption {
	return func(c *engineConfig) { c.defaults = d }
}

// pipelineOptions returns the engine's options, with the defaults of
// requests d.
func (c *engineConfig) pipelineOptions(d Defaults, log *slog.Logger) pipeline.Options {
	return pipeline.Options{
		EncodeWorkers:   c.workers.Encode,
		DenoiseWorkers:  c.workers.Denoise,
		DecodeWorkers:   c.workers.Decode,
		MaxBatch:        c.maxBatch,
		MaxBatchWait:    c.batchWait,
		DefaultWidth:    d.Width,
		DefaultHeight:   d.Height,
		DefaultGuidance: d.GuidanceScale,
		PreviewEvery:    c.taesd.previewEvery,
		Logger:          log,
	}
}

func (c *engineConfig) check() []error {
	errs := append(c.memory.check(), c.taesd.check()...)
	if w := c.workers; w.Encode < 0 || w.Denoise < 0 || w.Decode < 0 {
		errs = append(errs, fmt.Errorf("sd: WithWorkers: negative count in %+v", w))
	}
	if c.maxBatch < 0 || c.batchWait < 0 {
		errs = append(errs, fmt.Errorf("sd: WithBatching: negative size %d or wait %v", c.maxBatch, c.batchWait))
	}
	if c.mode != Latency && c.mode != Throughput {
		errs = append(errs, fmt.Errorf("sd: WithMode: unknown mode %d", int(c.mode)))
	}
	d := c.defaults
	if g := d.GuidanceScale; math.IsNaN(g) || g < 0 || g > MaxGuidance {
		errs = append(errs, fmt.Errorf("sd: WithDefaults: GuidanceScale %v is not a number in [0, %d]", g, MaxGuidance))
	}
	if d.Width < 0 || d.Height < 0 || d.Width%8 != 0 || d.Height%8 != 0 || d.Width > MaxSize || d.Height > MaxSize {
		errs = append(errs, fmt.Errorf("sd: WithDefaults: size %dx%d is not a multiple of 8 up to %d", d.Width, d.Height, MaxSize))
	}
	return errs
}

// applyMode fills the settings the mode decides and no option set.
func (c *config) applyMode() {
	if c.engine.mode != Throughput {
		return
	}
	w := &c.engine.workers
	if w.Denoise == 0 {
		w.Denoise = 2
	}
	// split the cores between the calls that run at once (the denoise
	// workers' UNet calls, and encoding and decoding beside them), unless
	// the caller chose a component's threads: all cores for every session
	// oversubscribes them (measured by the bench: a VAE decode took 1.8×
	// as long beside two UNet calls)
	share := max(1, runtime.NumCPU()/w.Denoise)
	for _, k := range components {
		if p := c.load.comp(k); p.threads == 0 {
			p.threads = share
		}
	}
}
