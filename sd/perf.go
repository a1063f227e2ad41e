package sd

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
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
const RewriteTolerance = session.RewriteTolerance

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
	int8     *Int8 // WithInt8 (int8.go)
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
// <cache>/rewritten (the per-user cache: $SDPIPE_CACHE_DIR,
// else $XDG_CACHE_HOME/sdpipe, else ~/.cache/sdpipe). The folder must be on the same file system as
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
	return append(errs, p.int8.check()...)
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

// warm runs the warm-up WithWarmup asked for, one component after the
// other (each call uses every core); each component warms itself up on
// its own example inputs.
func (f *Folder) warm(ctx context.Context, c *loadConfig) error {
	w := c.perf.warmup
	if w == nil {
		return nil
	}
	sw := session.Warmup{Width: w.Width, Height: w.Height, MaxCalls: w.MaxCalls, Steady: w.Steady}
	if sw.Width == 0 || sw.Height == 0 {
		d := f.defaults(Defaults{})
		sw.Width, sw.Height = d.Width, d.Height
	}
	for _, k := range []struct {
		c Component
		m interface {
			WarmUp(context.Context, session.Warmup) ([]time.Duration, error)
		}
	}{{TextEncoder, f.TextEncoder}, {TextEncoder, f.TextEncoder2}, {UNet, f.UNet}, {VAEDecoder, f.VAEDecoder}} {
		if k.m == (*textenc.Model)(nil) {
			continue // no text_encoder_2: not SDXL
		}
		if k.c == TextEncoder && f.offText != nil {
			continue // offloaded (WithOffload): loaded per request
		}
		start := time.Now()
		times, err := k.m.WarmUp(ctx, sw)
		if err != nil {
			return fmt.Errorf("sd: warm-up of %s: %w", k.c, err)
		}
		total := time.Since(start)
		c.logger.Info("sd: warmed up", "component", k.c.String(), "width", sw.Width, "height", sw.Height,
			"calls", times, "duration", total)
		f.load.mu.Lock()
		if f.load.r.Warmup == nil {
			f.load.r.Warmup = make(map[Component]time.Duration)
			f.load.r.WarmupCalls = make(map[Component][]time.Duration)
		}
		// SDXL's text_encoder_2 counts as the text encoder's
		f.load.r.Warmup[k.c] += total
		f.load.r.WarmupCalls[k.c] = append(f.load.r.WarmupCalls[k.c], times...)
		f.load.mu.Unlock()
	}
	return ctx.Err()
}
