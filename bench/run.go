package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"image"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/unet"
)

// RequestTiming is one request's timeline, in seconds from the start of
// its run.
type RequestTiming struct {
	Index        int     `json:"index"`
	Submit       float64 `json:"submit"`
	EncodeStart  float64 `json:"encode_start"`
	EncodeEnd    float64 `json:"encode_end"`
	DenoiseStart float64 `json:"denoise_start"`
	DenoiseEnd   float64 `json:"denoise_end"`
	DecodeStart  float64 `json:"decode_start"`
	DecodeEnd    float64 `json:"decode_end"`
	Latency      float64 `json:"latency"` // Submit to result
	Steps        int     `json:"steps"`
	Batch        int     `json:"batch"` // requests sharing the UNet calls

	submitted, encStart, encEnd, denStart, denEnd, decStart, decEnd, done time.Time
	steps, batch                                                          int
}

func fromMetrics(m pipeline.RequestMetrics) RequestTiming {
	var t RequestTiming
	t.submitted = m.Submitted
	t.encStart = m.Submitted.Add(m.EncodeQueue)
	t.encEnd = t.encStart.Add(m.Encode)
	t.denStart = t.encEnd.Add(m.DenoiseQueue)
	t.denEnd = t.denStart.Add(m.Denoise)
	t.decStart = t.denEnd.Add(m.DecodeQueue)
	t.decEnd = t.decStart.Add(m.Decode)
	t.done = m.Submitted.Add(m.Total)
	t.steps, t.batch = m.Steps, m.BatchSize
	return t
}

// fill sets the exported fields relative to origin.
func (t *RequestTiming) fill(i int, origin time.Time) {
	s := func(x time.Time) float64 { return x.Sub(origin).Seconds() }
	t.Index = i
	t.Submit, t.EncodeStart, t.EncodeEnd = s(t.submitted), s(t.encStart), s(t.encEnd)
	t.DenoiseStart, t.DenoiseEnd = s(t.denStart), s(t.denEnd)
	t.DecodeStart, t.DecodeEnd = s(t.decStart), s(t.decEnd)
	t.Latency = t.done.Sub(t.submitted).Seconds()
	t.Steps, t.Batch = t.steps, t.batch
}

// harness holds what the runs share.
type harness struct {
	cfg   Config
	f     *sd.Folder
	model *pipeline.Pipeline // f's models as sd.Open runs them: latency mode, no call recorder
	half  *unet.Model        // UNet session with NumCPU/2 threads, for Pipelined
	// halfFolder owns half
	halfFolder *sd.Folder
	rec        *callRecorder
	seq        *sequential
	engines    map[Mode]*pipeline.Pipeline
	stats      map[string]statser
}

func (h *harness) close() error {
	var errs []error
	for _, p := range h.engines {
		errs = append(errs, p.Close())
	}
	if h.model != nil {
		errs = append(errs, h.model.Close())
	}
	if h.halfFolder != nil {
		errs = append(errs, h.halfFolder.Close())
	}
	if h.f != nil {
		errs = append(errs, h.f.Close())
	}
	return errors.Join(errs...)
}

// components are h's models with the call recorder, the UNet u.
func (h *harness) components(u pipeline.Denoiser) pipeline.Components {
	c := h.f.Components()
	c.TextEncoder = h.rec.encoder(c.TextEncoder)
	c.UNet = h.rec.denoiser(u)
	c.VAEDecoder = h.rec.decoder(c.VAEDecoder)
	return c
}

// statser is a loaded component: its session's calls and busy time.
type statser interface{ Stats() (int64, time.Duration) }

// sessionStats returns each session's (calls, busy).
func (h *harness) sessionStats() map[string]SessionStats {
	out := map[string]SessionStats{}
	for name, s := range h.stats {
		c, b := s.Stats()
		out[name] = SessionStats{Calls: c, Busy: b.Seconds()}
	}
	return out
}

// SessionStats is an ONNX Runtime session's call count and the seconds
// spent inside ONNX Runtime.
type SessionStats struct {
	Calls int64   `json:"calls"`
	Busy  float64 `json:"busy_s"`
}

func statsDelta(a, b map[string]SessionStats) map[string]SessionStats {
	out := map[string]SessionStats{}
	for k, v := range b {
		d := SessionStats{Calls: v.Calls - a[k].Calls, Busy: v.Busy - a[k].Busy}
		if d.Calls > 0 {
			out[k] = d
		}
	}
	return out
}

// Run runs the benchmark described by cfg and returns its report. It takes
// minutes on the default model: model generation on first use, loading,
// warm-up, then every mode. ctx cancels it.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if cfg.ModelDir == "" {
		log.Info("bench: preparing the default model", "dir", DefaultModelDir(cfg.Attention))
		if cfg.ModelDir, err = DefaultModel(cfg.Attention); err != nil {
			return nil, err
		}
	}
	rep = newReport(cfg)
	if rep.ORTVersion, rep.ORTLibrary, err = ort.Version(cfg.LibraryPath); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}

	// The machine's compute reference, before anything else loads it.
	if cfg.MatMulN > 0 {
		threads := []int{1}
		if n := runtime.NumCPU() / 2; n > 1 {
			threads = append(threads, n)
		}
		if n := runtime.NumCPU(); n > 1 {
			threads = append(threads, n)
		}
		for _, t := range threads {
			r, err := MatMulPeak(ctx, cfg.LibraryPath, cfg.MatMulN, t, cfg.MatMulRuns)
			if err != nil {
				return nil, err
			}
			log.Info("bench: matmul", "threads", t, "gflops", r.GFLOPS)
			rep.MatMul = append(rep.MatMul, r)
		}
	}

	h := &harness{cfg: cfg, rec: newCallRecorder(), engines: map[Mode]*pipeline.Pipeline{}}
	defer func() { err = errors.Join(err, h.close()) }()
	t0 := time.Now()
	opts := []sd.LoadOption{sd.WithoutVAEEncoder()}
	if cfg.LibraryPath != "" {
		opts = append(opts, sd.WithLibraryPath(cfg.LibraryPath))
	}
	switch {
	case cfg.NoRewrites:
		opts = append(opts, sd.WithoutRewrites())
	case cfg.Rewrites != nil:
		opts = append(opts, sd.WithRewrites(cfg.Rewrites...))
	}
	if cfg.NoSpinning {
		for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder} {
			opts = append(opts, sd.WithSessionOptions(c, sd.SessionOptions{Spinning: sd.Off}))
		}
	}
	for c, d := range cfg.Devices {
		opts = append(opts, sd.WithDevice(c, d))
	}
	if h.f, err = sd.OpenFolder(ctx, cfg.ModelDir, opts...); err != nil {
		return nil, err
	}
	if err := checkFamily(h.f, cfg); err != nil {
		return nil, err
	}
	if h.model, err = pipeline.New(h.f.Components(), pipeline.Options{}); err != nil {
		return nil, err
	}
	rep.LoadS = time.Since(t0).Seconds()
	if !cfg.NoRewrites {
		rep.Rewrites = map[string]string{}
		for c, r := range h.f.Load().Rewrites {
			rep.Rewrites[c.String()] = r
		}
	}
	rep.SeqLen = h.f.Tokenizer.MaxLength()
	calls, err := unetCalls(h.f, cfg)
	if err != nil {
		return nil, err
	}
	rep.setWork(cfg, calls)
	h.stats = map[string]statser{
		"text_encoder": h.f.TextEncoder,
		"unet":         h.f.UNet,
		"vae_decoder":  h.f.VAEDecoder,
	}
	if h.f.TextEncoder2 != nil {
		h.stats["text_encoder_2"] = h.f.TextEncoder2
	}
	halfThreads := max(1, runtime.NumCPU()/2)
	if slices.Contains(cfg.Modes, Pipelined) || (cfg.MatMulN > 0 && !cfg.NoScaling) {
		// a second model whose UNet has half the threads, rewritten alike
		// (from the rewrite cache the first open filled)
		halfOpts := append(slices.Clone(opts), sd.WithThreads(sd.UNet, halfThreads))
		if h.halfFolder, err = sd.OpenFolder(ctx, cfg.ModelDir, halfOpts...); err != nil {
			return nil, err
		}
		h.half = h.halfFolder.UNet
		h.stats["unet_half"] = h.half
	}
	h.seq = &sequential{f: h.f, enc: h.rec.encoder(h.f.TextEncoder), den: h.rec.denoiser(h.f.UNet), dec: h.rec.decoder(h.f.VAEDecoder)}
	for _, m := range cfg.Modes {
		var p *pipeline.Pipeline
		switch m {
		case Pipelined:
			p, err = pipeline.New(h.components(h.half), pipeline.Options{EncodeWorkers: 1, DenoiseWorkers: 2, DecodeWorkers: 1})
		case PipelinedFull:
			p, err = pipeline.New(h.components(h.f.UNet), pipeline.Options{})
		case Batched:
			p, err = pipeline.New(h.components(h.f.UNet), pipeline.Options{MaxBatch: cfg.MaxBatch, MaxBatchWait: cfg.BatchWait})
		}
		if err != nil {
			return nil, err
		}
		if p != nil {
			h.engines[m] = p
		}
	}
	log.Info("bench: loaded", "dir", cfg.ModelDir, "seconds", rep.LoadS)

	if err := h.warmUp(ctx); err != nil {
		return nil, err
	}
	if h.half != nil {
		if rep.UNetScaling, err = h.unetScaling(ctx, halfThreads); err != nil {
			return nil, err
		}
	}
	for r := range cfg.Rounds {
		order := slices.Clone(cfg.Modes)
		if r%2 == 1 {
			slices.Reverse(order)
		}
		for _, m := range order {
			log.Info("bench: stream", "mode", m, "round", r+1, "requests", cfg.Requests, "concurrency", h.concurrency(m))
			run, err := h.stream(ctx, m)
			if err != nil {
				return nil, fmt.Errorf("bench: %s: %w", m, err)
			}
			run.Round = r + 1
			log.Info("bench: stream done", "mode", m, "wall", run.Wall, "images/min", run.ImagesPerMin, "load", run.Load)
			rep.Runs = append(rep.Runs, run)
			rep.summarize()
			if cfg.OnProgress != nil {
				cfg.OnProgress(rep)
			}
		}
	}
	// single requests last, so that a run cut short still has the streams
	if cfg.LatencyRepeats > 0 {
		if rep.Latency, err = h.latencyPairs(ctx); err != nil {
			return nil, err
		}
	}
	rep.PeakRSS = procStatus("VmHWM") // after resets: the last mode's
	rep.summarize()
	return rep, nil
}

// checkFamily refuses the measurements that speak SD 1.x/2.x only on a
// model of another family: the sequential baseline and the UNet scaling
// calls build plain UNet inputs, and the pipelined mode opens the model a
// second time, which for SDXL's 13 GB of weights a machine rarely holds.
func checkFamily(f *sd.Folder, cfg Config) error {
	if f.TextEncoder2 == nil {
		return nil
	}
	var refused []string
	for _, m := range cfg.Modes {
		if m == Sequential || m == Pipelined {
			refused = append(refused, "-modes "+string(m))
		}
	}
	if cfg.LatencyRepeats > 0 {
		refused = append(refused, "-single (the sequential baseline)")
	}
	if cfg.MatMulN > 0 && !cfg.NoScaling {
		refused = append(refused, "-scaling")
	}
	if len(refused) == 0 {
		return nil
	}
	return fmt.Errorf("bench: %s has two text encoders (SDXL), which %s do not support: run with -modes pipelined-full,batched -single 0 -scaling=false",
		cfg.ModelDir, strings.Join(refused, ", "))
}

func (h *harness) concurrency(m Mode) int {
	if m == Sequential {
		return 1
	}
	return h.cfg.Concurrency
}

// warmUp runs a short request through every path, so that the sessions'
// slow first calls at these shapes are not timed.
func (h *harness) warmUp(ctx context.Context) error {
	req := h.cfg.request(0)
	req.Steps = min(req.Steps, 2)
	h.cfg.Logger.Info("bench: warming up")
	if slices.Contains(h.cfg.Modes, Sequential) || h.cfg.LatencyRepeats > 0 {
		if _, _, err := h.seq.generate(ctx, req); err != nil {
			return fmt.Errorf("bench: warm-up: %w", err)
		}
	}
	if _, err := h.model.Generate(ctx, req); err != nil {
		return fmt.Errorf("bench: warm-up: %w", err)
	}
	for m, p := range h.engines {
		n := 1
		switch m {
		case Pipelined:
			n = 2 // both denoise workers
		case Batched:
			n = h.cfg.MaxBatch // the batched shape
		}
		if _, err := runEngine(ctx, p, req, n, n); err != nil {
			return fmt.Errorf("bench: warm-up %s: %w", m, err)
		}
	}
	h.rec.reset()
	return nil
}

// runEngine runs n copies of req (seeds req.Seed+i), c at a time, and
// returns their metrics in request order.
func runEngine(ctx context.Context, p *pipeline.Pipeline, req pipeline.Request, n, c int) ([]pipeline.RequestMetrics, error) {
	return runEngineFunc(ctx, p, func(i int) pipeline.Request {
		r := req
		r.Seed += int64(i)
		return r
	}, n, c, nil)
}

func runEngineFunc(ctx context.Context, p *pipeline.Pipeline, req func(int) pipeline.Request, n, c int, images []image.Image) ([]pipeline.RequestMetrics, error) {
	out := make([]pipeline.RequestMetrics, n)
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(c, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				res, err := p.Generate(ctx, req(i))
				if err != nil {
					errs[i] = err
					continue
				}
				out[i] = res.Metrics
				if images != nil && len(res.Images) > 0 {
					images[i] = res.Images[0]
				}
			}
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// unetScaling times one guided UNet call on all cores and on half of them,
// alternating, after the warm-up.
func (h *harness) unetScaling(ctx context.Context, halfThreads int) (*Scaling, error) {
	cfg := h.cfg
	lc, lh, lw := h.f.UNet.OutChannels(), cfg.Height/8, cfg.Width/8
	x := make([]float32, 2*lc*lh*lw)
	for i := range x {
		x[i] = float32(i%31)/31 - 0.5
	}
	hidden := h.f.TextEncoder.HiddenSize()
	if hidden == 0 {
		hidden = cfg.Arch.Text.Hidden
	}
	cond := make([]float32, 2*h.f.Tokenizer.MaxLength()*hidden)
	for i := range cond {
		cond[i] = float32(i%17)/17 - 0.5
	}
	call := func(u *unet.Model) (float64, error) {
		t0 := time.Now()
		_, err := u.Predict(ctx, tensor.New(tensor.WithShape(2, lc, lh, lw), tensor.WithBacking(x)), []float64{500},
			tensor.New(tensor.WithShape(2, h.f.Tokenizer.MaxLength(), hidden), tensor.WithBacking(cond)))
		return time.Since(t0).Seconds(), err
	}
	s := &Scaling{FewThreads: halfThreads, AllThreads: runtime.NumCPU()}
	var all, few []float64
	for range 2 {
		a, err := call(h.f.UNet)
		if err != nil {
			return nil, err
		}
		f, err := call(h.half)
		if err != nil {
			return nil, err
		}
		all, few = append(all, a), append(few, f)
	}
	s.AllS, s.FewS = slices.Min(all), slices.Min(few)
	s.Speedup = s.FewS / s.AllS
	h.cfg.Logger.Info("bench: unet thread scaling", "all", s.AllS, "few", s.FewS, "speedup", s.Speedup)
	return s, nil
}

// Scaling is the time of one guided UNet call on few and on all threads.
type Scaling struct {
	FewThreads int     `json:"few_threads"`
	AllThreads int     `json:"all_threads"`
	FewS       float64 `json:"few_s"`
	AllS       float64 `json:"all_s"`
	Speedup    float64 `json:"speedup"` // FewS / AllS
}

// latencyPairs times single requests: the sequential loop against the
// engine opened by sd.Open in its default latency mode.
func (h *harness) latencyPairs(ctx context.Context) (*LatencyCompare, error) {
	lc := &LatencyCompare{}
	req := h.cfg.request(0)
	for i := range h.cfg.LatencyRepeats {
		for k := range 2 {
			engineFirst := i%2 == 1
			if (k == 0) == engineFirst {
				before := h.sessionStats()
				t0 := time.Now()
				res, err := h.model.Generate(ctx, req)
				if err != nil {
					return nil, err
				}
				wall := time.Since(t0).Seconds()
				lc.Engine = append(lc.Engine, wall)
				lc.EngineOutside = append(lc.EngineOutside, outsideFrac(wall, statsDelta(before, h.sessionStats())))
				_ = res
			} else {
				before := h.sessionStats()
				t0 := time.Now()
				if _, _, err := h.seq.generate(ctx, req); err != nil {
					return nil, err
				}
				wall := time.Since(t0).Seconds()
				lc.Sequential = append(lc.Sequential, wall)
				lc.SequentialOutside = append(lc.SequentialOutside, outsideFrac(wall, statsDelta(before, h.sessionStats())))
			}
		}
		h.cfg.Logger.Info("bench: single request", "pair", i+1, "sequential", lc.Sequential[i], "engine", lc.Engine[i])
	}
	h.rec.reset()
	lc.summarize()
	return lc, nil
}

func outsideFrac(wall float64, st map[string]SessionStats) float64 {
	var busy float64
	for _, s := range st {
		busy += s.Busy
	}
	return (wall - busy) / wall
}

// stream runs the request stream in mode m.
func (h *harness) stream(ctx context.Context, m Mode) (*ModeRun, error) {
	cfg := h.cfg
	// the machine's peak right before the stream: on a shared machine it
	// moves with the load
	var peak float64
	if cfg.MatMulN > 0 {
		r, err := MatMulPeak(ctx, cfg.LibraryPath, cfg.MatMulN, runtime.NumCPU(), 5)
		if err != nil {
			return nil, err
		}
		peak = r.GFLOPS
	}
	runtime.GC()
	rssOK := resetPeakRSS()
	rssBefore := procStatus("VmRSS")
	h.rec.reset()
	before := h.sessionStats()
	cpu0 := cpuTime()
	start := time.Now()
	timings := make([]RequestTiming, cfg.Requests)
	if m == Sequential {
		for i := range cfg.Requests {
			_, tm, err := h.seq.generate(ctx, cfg.request(i))
			if err != nil {
				return nil, err
			}
			timings[i] = tm
		}
	} else {
		ms, err := runEngineFunc(ctx, h.engines[m], cfg.request, cfg.Requests, cfg.Concurrency, nil)
		if err != nil {
			return nil, err
		}
		for i, rm := range ms {
			timings[i] = fromMetrics(rm)
		}
	}
	end := time.Now()
	cpu := cpuTime() - cpu0
	run := &ModeRun{Mode: m, Concurrency: h.concurrency(m), Requests: cfg.Requests, Load: loadAvg(), PeakGFLOPS: peak}
	if rssOK {
		run.PeakRSS, run.RSSBefore = procStatus("VmHWM"), rssBefore
	}
	run.Sessions = statsDelta(before, h.sessionStats())
	run.CPU = cpu.Seconds()
	run.analyze(start, end, timings, h.rec.reset())
	return run, nil
}

// unetCalls returns the number of UNet calls of one request: the length of
// the scheduler's timesteps (PNDM makes one more than Steps).
func unetCalls(f *sd.Folder, cfg Config) (int, error) {
	name := cmp.Or(cfg.Scheduler, f.Scheduler.ClassName())
	s, err := scheduler.New(name, f.Scheduler, scheduler.Options{
		Steps: cfg.Steps, Size: f.UNet.OutChannels() * cfg.Height / 8 * cfg.Width / 8, Noise: zeroNoise{}})
	if err != nil {
		return 0, fmt.Errorf("bench: %w", err)
	}
	return len(s.Timesteps()), nil
}

type zeroNoise struct{}

func (zeroNoise) Randn(dst []float32) { clear(dst) }
