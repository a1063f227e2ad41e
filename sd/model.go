package sd

import (
	"cmp"
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/unet"
)

// Model is an opened model folder with its running engine. It is safe for
// concurrent use; the caller must Close it.
type Model struct {
	f        *Folder
	rt       interface{ Close() error } // a checkpoint's runtime components instead of f's models (checkpoint.go)
	p        *pipeline.Pipeline
	name     string // for image metadata
	defaults Defaults
	mem      *memoryModel // memory admission (memory.go)
	taesd    *taesdModels // WithTAESD's sessions (taesd.go), nil without
	once     sync.Once
	err      error
}

// Open opens the model folder at dir (see OpenFolder for what it checks
// and loads) and starts the engine on it. The options are checked first,
// all at once. The caller must Close the Model.
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
	f, err := openFolder(ctx, dir, &cfg.load)
	if err != nil {
		return nil, err
	}
	m = &Model{f: f, name: cmp.Or(f.Info.Name, name)}
	m.defaults = f.defaults(cfg.engine.defaults)
	po := cfg.engine.pipelineOptions(m.defaults, cfg.load.logger)
	c := tiledComponents(f.Components(), f)
	if m.taesd, err = openTAESD(ctx, cfg, &c); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	if m.p, err = pipeline.New(c, po); err != nil {
		return nil, errors.Join(err, m.taesd.Close(), f.Close())
	}
	m.mem = newMemoryModel(f, cfg.engine.memory, &cfg.load)
	return m, nil
}

// Components returns the folder's models as the engine (package pipeline)
// takes them, for programs that run a pipeline.Pipeline of their own on
// them; Open does that for the others. The models still belong to f.
func (f *Folder) Components() pipeline.Components {
	c := pipeline.Components{
		Tokenizer:           f.Tokenizer,
		TextEncoder:         f.TextEncoder,
		UNet:                f.UNet,
		VAEDecoder:          f.VAEDecoder,
		Scheduler:           f.Scheduler,
		ScalingFactor:       f.ScalingFactor,
		LatentChannels:      f.UNet.OutChannels(),
		UNetInChannels:      f.UNet.InChannels(),
		UNetTimestepPerItem: f.UNet.PerItemTimesteps(),
	}
	if f.VAEEncoder != nil { // not a typed nil in the interface
		c.VAEEncoder = f.VAEEncoder
	}
	if f.TextEncoder2 != nil { // SDXL
		c.TextEncoder = newXLEncoder(f.TextEncoder, f.TextEncoder2, f.Tokenizer2)
		c.Tokenizer2 = f.Tokenizer2
		c.Added, c.ZeroEmptyNegative = true, f.zeroEmpty
	}
	if f.offText != nil { // WithOffload (offload.go)
		c.TextEncoder = f.offText
	}
	if n := f.UNet.TimestepCondDim(); n > 0 { // a latent consistency model
		c.GuidanceEmbedding, c.Embed = n, unet.GuidanceEmbedding
	}
	return c
}

// lcmGuidance is diffusers' LatentConsistencyModelPipeline's default
// guidance scale, which a UNet with timestep_cond gets by default.
const lcmGuidance = 8.5

// defaults returns the defaults of requests: those of over that are set,
// else the folder's sdpipe.json's, else diffusers' (the UNet's
// sample_size × 8, else 512×512, at guidance 7.5, or 8.5 for a latent
// consistency UNet, as its pipeline).
func (f *Folder) defaults(over Defaults) Defaults {
	d := Defaults{Width: 512, Height: 512, GuidanceScale: pipeline.DefaultGuidance}
	if f.UNet != nil && f.UNet.TimestepCondDim() > 0 {
		d.GuidanceScale = lcmGuidance
	}
	if s := f.sampleSize; s > 0 {
		d.Width, d.Height = 8*s, 8*s
	}
	for _, o := range []Defaults{f.Info.Defaults, over} {
		if o.Width != 0 || o.Height != 0 {
			d.Width, d.Height = cmp.Or(o.Width, d.Width), cmp.Or(o.Height, d.Height)
		}
		d.GuidanceScale = cmp.Or(o.GuidanceScale, d.GuidanceScale)
	}
	return d
}

// Defaults returns what a request that leaves Width, Height or
// GuidanceScale zero gets: the options' (WithDefaults), else the folder's
// sdpipe.json's, else diffusers'.
func (m *Model) Defaults() Defaults { return m.defaults }

// Info returns what the folder's sdpipe.json says about the model (zero
// when it has none), with Name set to the name image metadata shows.
func (m *Model) Info() ModelInfo {
	info := m.f.Info
	info.Name = m.name
	info.PromptWords = maps.Clone(info.PromptWords)
	info.ExamplePrompts = slices.Clone(info.ExamplePrompts)
	return info
}

// Load reports how the model's components were loaded: load times,
// rewrites and warm-up.
func (m *Model) Load() LoadReport { return m.f.Load() }

// Submit validates req and queues it. It blocks until the engine accepts
// the request, ctx ends (it then returns ctx's error) or the Model is
// closed (ErrClosed): there is no unbounded queue. An invalid request gets
// a *RequestError at once, and one whose estimated memory exceeds the
// budget on its own a *MemoryError (see WithMemoryBudget); one that fits
// waits until it fits beside the requests in flight. The request runs
// until it finishes, fails, or ctx is canceled; the Handle waits for its
// result.
func (m *Model) Submit(ctx context.Context, req Request) (*Handle, error) {
	e, admitted, inp, err := req.prepare()
	if err != nil {
		return nil, err
	}
	release, tile, err := m.mem.admit(ctx, admitted, m.defaults, m.f.Tokenizer)
	if err != nil {
		return nil, err
	}
	h, err := m.p.Submit(withVAETile(ctx, tile), e) // the VAE reads its tile from the job's context (tiling.go)
	if err != nil {
		release()
		return nil, engineError(err)
	}
	go func() { <-h.Done(); release() }()
	return &Handle{h: h, req: req, model: m.name, m: m, inp: inp}, nil
}

// Generate is Submit followed by Handle.Wait.
func (m *Model) Generate(ctx context.Context, req Request) (*Result, error) {
	h, err := m.Submit(ctx, req)
	if err != nil {
		return nil, err
	}
	return h.Wait(ctx)
}

// Metrics returns the engine's counters. It is safe for concurrent use.
func (m *Model) Metrics() Metrics { return Metrics(m.p.Metrics()) }

// Close cancels the requests in flight, stops the engine, then closes the
// models. It is idempotent.
func (m *Model) Close() error {
	m.once.Do(func() {
		m.err = errors.Join(m.p.Close(), m.f.Close())
		if m.rt != nil {
			m.err = errors.Join(m.err, m.rt.Close())
		}
		m.err = errors.Join(m.err, m.taesd.Close())
	})
	return m.err
}

// Shutdown lets the requests in flight finish (cancelling them when ctx
// ends), then closes the models.
func (m *Model) Shutdown(ctx context.Context) error {
	err := m.p.Shutdown(ctx)
	return errors.Join(err, m.Close())
}
