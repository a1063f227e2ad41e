package sd

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
)

// Rewrite names a graph rewrite that OpenFolder applies to the component
// models as it loads them (DefaultRewrites unless WithRewrites or
// WithoutRewrites says otherwise). A rewrite changes only the graph handed
// to ONNX Runtime, never the folder's files, and is used only after it has
// been proven to keep the component's outputs within RewriteTolerance.
type Rewrite string

// The rewrites WithRewrites accepts.
const (
	// RewriteBaddbmm removes the zero-beta baddbmm that the diffusers ONNX
	// converter wrote for attention scores on torch below 2.0
	// (ConstantOfShape zeros · 0 added to the scaled scores).
	RewriteBaddbmm Rewrite = Rewrite(rewrite.Baddbmm)
	// RewriteFoldScale moves the attention scale from the score tensor onto
	// the keys. ONNX Runtime's CPU provider already fuses the scale into
	// its MatMul, so this brings nothing there; it is not a default.
	RewriteFoldScale Rewrite = Rewrite(rewrite.FoldScale)
	// RewriteMHA fuses each attention (MatMul → Softmax → MatMul over split
	// heads, after RewriteBaddbmm for the converter's form) into ONNX
	// Runtime's com.microsoft.MultiHeadAttention.
	RewriteMHA Rewrite = Rewrite(rewrite.MHA)
)

// RewriteTolerance is the largest output difference a rewrite may cause
// on the verification inputs; a rewrite that exceeds it is refused.
const RewriteTolerance = 1e-4

// DefaultRewrites returns the rewrites OpenFolder applies unless told
// otherwise, and WithRewrites when given none: those measured faster on the
// CPU provider (see BENCHMARKS.md).
// RewriteMHA among them is applied by default only to components on the
// CPU or CUDA, whose providers have a MultiHeadAttention kernel.
func DefaultRewrites() []Rewrite { return []Rewrite{RewriteBaddbmm, RewriteMHA} }

// perfConfig is what WithRewrites, WithRewriteCache and WithWarmup record.
type perfConfig struct {
	rewrites []Rewrite // nil: no rewriting
	defaults bool      // rewrites are DefaultRewrites()
	cacheDir string
	warmup   *Warmup
}

// WithRewrites sets the rewrites applied to the component graphs at load;
// with rs empty, DefaultRewrites, which OpenFolder applies anyway. Each
// rewritten component is first run beside the original on small random
// inputs and used only when its outputs agree within RewriteTolerance;
// otherwise the original is loaded and the refusal is logged. The
// rewritten graphs and the verification results are kept in the rewrite
// cache (see WithRewriteCache), so only the first open of a model pays for
// them.
func WithRewrites(rs ...Rewrite) LoadOption {
	defaults := len(rs) == 0
	if defaults {
		rs = DefaultRewrites()
	}
	rs = slices.Clone(rs)
	return func(c *loadConfig) { c.perf.rewrites, c.perf.defaults = rs, defaults }
}

// WithoutRewrites loads the component graphs as the folder has them.
func WithoutRewrites() LoadOption {
	return func(c *loadConfig) { c.perf.rewrites, c.perf.defaults = nil, false }
}

// WithRewriteCache keeps rewritten graphs in dir instead of the default
// <ort.CacheDir()>/rewritten. The folder must be on the same file system as
// the model (rewritten graphs sit beside hard links to the original weight
// files); where it is not, the original graph is loaded, with a log line.
func WithRewriteCache(dir string) LoadOption {
	return func(c *loadConfig) { c.perf.cacheDir = dir }
}

// Warmup configures the warm-up OpenFolder runs after loading: each
// session is called at the given shapes until its call time is steady,
// so that the first requests do not pay for ONNX Runtime's first-call
// allocations.
type Warmup struct {
	// Width and Height are the image size in pixels; zero means the
	// model's default size (Model.Defaults).
	Width, Height int
	// MaxCalls bounds the calls per session; zero means 4.
	MaxCalls int
	// Steady is the relative change between two consecutive calls below
	// which a session counts as warm; zero means 0.1.
	Steady float64
}

// WithWarmup warms every session up after loading (see Warmup). The times
// are logged and reported by Folder.Load.
func WithWarmup(w Warmup) LoadOption {
	return func(c *loadConfig) { c.perf.warmup = &w }
}

func (p *perfConfig) check() []error {
	var errs []error
	for _, r := range p.rewrites {
		if _, err := rewrite.Parse(string(r)); err != nil {
			errs = append(errs, fmt.Errorf("sd: WithRewrites: unknown rewrite %q", r))
		}
	}
	if w := p.warmup; w != nil {
		if w.Width < 0 || w.Height < 0 || w.Width%8 != 0 || w.Height%8 != 0 {
			errs = append(errs, fmt.Errorf("sd: WithWarmup: %dx%d is not a multiple of 8", w.Width, w.Height))
		}
		if w.MaxCalls < 0 || w.Steady < 0 {
			errs = append(errs, fmt.Errorf("sd: WithWarmup: negative MaxCalls %d or Steady %g", w.MaxCalls, w.Steady))
		}
	}
	return errs
}

// LoadReport says how a Folder was loaded.
type LoadReport struct {
	// Open is the time each component took to load, rewriting and
	// verification included.
	Open map[Component]time.Duration
	// Rewrites describes what was rewritten in each component ("baddbmm×16
	// (…nodes)"), or why nothing was; empty with WithoutRewrites.
	Rewrites map[Component]string
	// Warmup is the time each component's warm-up took, and WarmupCalls the
	// duration of each of its calls; empty without WithWarmup.
	Warmup      map[Component]time.Duration
	WarmupCalls map[Component][]time.Duration
}

// loadState collects a LoadReport while the components load.
type loadState struct {
	mu sync.Mutex
	r  LoadReport
}

func (s *loadState) opened(c Component, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r.Open == nil {
		s.r.Open = make(map[Component]time.Duration)
	}
	s.r.Open[c] = d
}

func (s *loadState) rewrote(c Component, what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.r.Rewrites == nil {
		s.r.Rewrites = make(map[Component]string)
	}
	s.r.Rewrites[c] = what
}

// Load reports the load, rewrite and warm-up times of the folder's
// components. It is safe for concurrent use.
func (f *Folder) Load() LoadReport {
	f.load.mu.Lock()
	defer f.load.mu.Unlock()
	r := f.load.r
	clone := func(m map[Component]time.Duration) map[Component]time.Duration {
		if m == nil {
			return nil
		}
		c := make(map[Component]time.Duration, len(m))
		for k, v := range m {
			c[k] = v
		}
		return c
	}
	r.Open, r.Warmup = clone(r.Open), clone(r.Warmup)
	if r.Rewrites != nil {
		m := make(map[Component]string, len(r.Rewrites))
		for k, v := range r.Rewrites {
			m[k] = v
		}
		r.Rewrites = m
	}
	if r.WarmupCalls != nil {
		m := make(map[Component][]time.Duration, len(r.WarmupCalls))
		for k, v := range r.WarmupCalls {
			m[k] = slices.Clone(v)
		}
		r.WarmupCalls = m
	}
	return r
}

// modelPath returns the model file OpenFolder loads for component k: the
// rewritten one when rewrites are on and the rewrite is proven, else
// the folder's own. Problems are logged, never returned: the original
// model is always a valid fallback.
func (c *loadConfig) modelPath(ctx context.Context, f *Folder, k Component, lay *layout, o ort.Options) string {
	src := lay.modelPath(k)
	if len(c.perf.rewrites) == 0 {
		return src
	}
	log := c.logger.With("component", k.String())
	if io := lay.io[k]; io != nil {
		for _, v := range io.Outputs {
			if v.ElemType != onnxpb.Float {
				// the verification compares float32 outputs only; without it
				// no rewrite is used, so do not pay for one
				log.Info("sd: graph not rewritten: its outputs are not float32, so a rewrite could not be verified", "output", v.Name)
				f.load.rewrote(k, "skipped: outputs are not float32")
				return src
			}
		}
	}
	var rs []rewrite.Rewrite
	for _, r := range c.perf.rewrites {
		if r == RewriteMHA && c.perf.defaults && o.Provider != ort.CPU && o.Provider != ort.CUDA {
			continue
		}
		rs = append(rs, rewrite.Rewrite(r))
	}
	cache := c.perf.cacheDir
	if cache == "" {
		cache = filepath.Join(ort.CacheDir(), "rewritten")
	}
	res, err := rewrite.Prepare(src, rs, cache)
	if err != nil {
		log.Warn("sd: rewrite failed, loading the original graph", "error", err)
		f.load.rewrote(k, "failed: "+err.Error())
		return src
	}
	for _, why := range res.Report.Refused {
		log.Warn("sd: rewrite refused at one site", "reason", why)
	}
	if !res.Changed() {
		f.load.rewrote(k, res.Report.String())
		return src
	}
	if res.Path == "" {
		log.Warn("sd: rewritten graph cannot be placed beside the weights (cache on another file system?), loading the original", "cache", cache)
		f.load.rewrote(k, "refused: cache on another file system")
		return src
	}
	if res.Verified < 0 {
		in, err := verifyInputs(k, lay)
		var d float64
		if err == nil {
			vo := ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.IntraOpThreads}
			d, err = rewrite.Verify(ctx, res, in, vo)
		}
		if err != nil {
			log.Warn("sd: rewritten graph could not be verified, loading the original", "error", err)
			f.load.rewrote(k, "refused: "+err.Error())
			return src
		}
		// remembered either way, so that a refusal costs one verification
		if err := res.MarkVerified(d); err != nil {
			log.Warn("sd: rewrite cache", "error", err)
		}
	}
	if d := res.Verified; d > RewriteTolerance {
		log.Warn("sd: rewritten graph changes the outputs, loading the original",
			"max_difference", d, "tolerance", RewriteTolerance, "rewrites", res.Report.String(), "cached", res.Cached)
		f.load.rewrote(k, fmt.Sprintf("refused: outputs differ by %g", d))
		return src
	}
	log.Info("sd: rewritten", "rewrites", res.Report.String(), "cached", res.Cached,
		"max_difference", res.Verified, "duration", res.Elapsed, "path", res.Path)
	f.load.rewrote(k, res.Report.String())
	return res.Path
}

// verifyInputs makes small random inputs for component k.
func verifyInputs(k Component, lay *layout) ([]ort.Tensor, error) {
	ins, _, err := ort.ReadIO(lay.modelPath(k))
	if err != nil {
		return nil, err
	}
	r := rand.New(rand.NewPCG(uint64(k)+1, 11))
	const batch, side, seq = 2, 8, 77
	var in []ort.Tensor
	for _, v := range ins {
		shape := slices.Clone(v.Shape)
		for i, d := range shape {
			if d > 0 {
				continue
			}
			switch {
			case i == 0:
				shape[i] = batch
			case len(shape) == 4 && i >= 2 && k == VAEEncoder:
				shape[i] = 8 * side // pixels
			case len(shape) == 4 && i >= 2:
				shape[i] = side
			case len(shape) == 4 && i == 1 && k == VAEEncoder:
				shape[i] = 3 // RGB
			case len(shape) == 4 && i == 1:
				shape[i] = 4 // latent channels (the UNet's inpainting variant fixes 9)
			case len(shape) == 3 && i == 2:
				shape[i] = textHidden(lay)
			default:
				shape[i] = seq
			}
		}
		n := ort.Elems(shape)
		switch v.DType {
		case ort.Float32, ort.Float16:
			d := make([]float32, n)
			for i := range d {
				d[i] = float32(r.NormFloat64())
			}
			if v.Name == "timestep" {
				for i := range d {
					d[i] = 501
				}
			}
			in = append(in, ort.Tensor{Shape: shape, Data: d})
		case ort.Int32, ort.Int64:
			// byte-level tokens (every CLIP vocabulary has the 256 of
			// them) between the tokenizer's BOS and EOS
			d := make([]int64, n)
			for i := range d {
				d[i] = int64(r.IntN(256))
				if lay.tok != nil && i%seq == 0 {
					d[i] = int64(lay.tok.BOS())
				} else if lay.tok != nil && i%seq == seq-1 {
					d[i] = int64(lay.tok.EOS())
				}
			}
			if v.Name == "timestep" {
				for i := range d {
					d[i] = 501
				}
			}
			in = append(in, ort.Tensor{Shape: shape, Data: d})
		default:
			return nil, fmt.Errorf("input %s is %s", v.Name, v.DType)
		}
	}
	return in, nil
}

// textHidden returns the text encoder's hidden size, or 768 (SD 1.x) when
// the model leaves it dynamic.
func textHidden(lay *layout) int64 {
	if te := lay.io[TextEncoder]; te != nil {
		if v, ok := te.Output("last_hidden_state"); ok && len(v.Dims) == 3 && v.Dims[2].Value > 0 {
			return v.Dims[2].Value
		}
	}
	return 768
}

// warm runs the warm-up WithWarmup asked for, one component after the
// other (each call uses every core).
func (f *Folder) warm(ctx context.Context, c *loadConfig) error {
	w := c.perf.warmup
	if w == nil {
		return nil
	}
	width, height := w.Width, w.Height
	if width == 0 || height == 0 {
		d := f.defaults(Defaults{})
		width, height = d.Width, d.Height
	}
	maxCalls := cmp.Or(w.MaxCalls, 4)
	steady := w.Steady
	if steady == 0 {
		steady = 0.1
	}
	lh, lw := height/8, width/8
	seq := 77
	rows := 2                      // a guided step: unconditional and conditional
	ids := make([]int32, rows*seq) // empty prompts: BOS, EOS, padding
	for i := range ids {
		ids[i] = f.Tokenizer.Pad()
	}
	for r := range rows {
		ids[r*seq], ids[r*seq+1] = f.Tokenizer.BOS(), f.Tokenizer.EOS()
	}
	var hidden *tensor.Dense
	calls := []struct {
		c   Component
		run func(ctx context.Context) error
	}{
		{TextEncoder, func(ctx context.Context) (err error) {
			hidden, err = f.TextEncoder.Encode(ctx, ids, rows)
			return err
		}},
		{UNet, func(ctx context.Context) error {
			sample := tensor.New(tensor.WithShape(rows, f.UNet.InChannels(), lh, lw), tensor.WithBacking(make([]float32, rows*f.UNet.InChannels()*lh*lw)))
			_, err := f.UNet.Predict(ctx, sample, []float64{501}, hidden)
			return err
		}},
		{VAEDecoder, func(ctx context.Context) error {
			ch := f.VAEDecoder.LatentChannels()
			_, err := f.VAEDecoder.Decode(ctx, tensor.New(tensor.WithShape(1, ch, lh, lw), tensor.WithBacking(make([]float32, ch*lh*lw))))
			return err
		}},
	}
	for _, k := range calls {
		start := time.Now()
		var times []time.Duration
		for i := range maxCalls {
			t0 := time.Now()
			if err := k.run(ctx); err != nil {
				return fmt.Errorf("sd: warm-up of %s: %w", k.c, err)
			}
			times = append(times, time.Since(t0))
			if i > 0 {
				a, b := times[i-1].Seconds(), times[i].Seconds()
				if d := (a - b) / b; d < steady && d > -steady {
					break
				}
			}
		}
		total := time.Since(start)
		c.logger.Info("sd: warmed up", "component", k.c.String(), "width", width, "height", height,
			"calls", times, "duration", total)
		f.load.mu.Lock()
		if f.load.r.Warmup == nil {
			f.load.r.Warmup = make(map[Component]time.Duration)
			f.load.r.WarmupCalls = make(map[Component][]time.Duration)
		}
		f.load.r.Warmup[k.c], f.load.r.WarmupCalls[k.c] = total, times
		f.load.mu.Unlock()
	}
	return ctx.Err()
}
