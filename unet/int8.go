package unet

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// Int8 says how OpenInt8 quantizes a UNet. Only the kernels that ONNX
// Runtime's CPU provider runs fast are used (uint8 activations × int8
// weights, per output channel): MatMul and Gemm with constant weights
// become DynamicQuantizeMatMul, whose activation scale is computed in
// each call, so it follows the activations from step to step without
// calibration; and, with Conv, each convolution becomes QLinearConv, whose
// activation scales must be constants, calibrated on the model's own
// calls. Attention (activation × activation), the normalisations and
// elementwise ops stay float32, as do the first and last convolutions and
// layers with a reduction below 64.
type Int8 struct {
	// Conv quantizes the convolutions too, with activation ranges
	// calibrated on recorded calls (see Calls); without it only MatMul
	// and Gemm are int8.
	Conv bool
	// CalibrationID names the calibration run (prompts, size, steps,
	// seeds): the ranges are cached under the model's content hash and
	// it, so that a later open with the same ID calibrates nothing.
	CalibrationID string
	// Margin widens each calibrated range by this fraction of its width
	// on both sides, for values other prompts reach; 0 means 0.05.
	Margin float64
	// MaxRelError is the largest relative RMS difference to the float32
	// model allowed on the check inputs (random latents, timestep 501);
	// above it OpenInt8 fails. 0 means 0.5: a bound that catches a broken
	// model (NaN, wrong scales), not a quality measure; random inputs at
	// 8×8 latents are harder than real ones (the random-weight SD 1.5
	// UNet: 0.31, tiny-onnx-sd: 0.16).
	MaxRelError float64
}

func (q Int8) margin() float64 { return cmp.Or(q.Margin, 0.05) }

func (q Int8) maxRel() float64 { return cmp.Or(q.MaxRelError, 0.5) }

// ErrNeedCalls is returned by OpenInt8 when int8 convolutions need
// calibration ranges that are not cached and no calls were given.
var ErrNeedCalls = errors.New("unet: int8 convolutions need calibration calls")

// ErrInt8 reports a UNet that cannot be quantized (a float16 graph, or
// one with nothing to quantize) or whose int8 outputs stray too far from
// float32's.
var ErrInt8 = errors.New("unet: int8")

// Calls records the inputs of a Model's calls (see Model.Record), the
// calibration set of OpenInt8. It is safe for concurrent use.
type Calls struct {
	mu    sync.Mutex
	feeds [][]ort.Tensor
}

// Len returns the number of recorded session calls.
func (c *Calls) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.feeds)
}

func (c *Calls) add(in []ort.Tensor) {
	cp := make([]ort.Tensor, len(in))
	for i, t := range in {
		cp[i] = ort.Tensor{Shape: slices.Clone(t.Shape)}
		switch d := t.Data.(type) {
		case []float32:
			cp[i].Data = slices.Clone(d)
		case []int64:
			cp[i].Data = slices.Clone(d)
		default:
			cp[i].Data = d
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.feeds = append(c.feeds, cp)
}

// Record makes m copy the inputs of each of its calls into c until stop
// is called.
func (m *Model) Record(c *Calls) (stop func()) {
	m.rec.Store(c)
	return func() { m.rec.CompareAndSwap(c, nil) }
}

// Int8Report says what OpenInt8 did.
type Int8Report struct {
	// Summary says what was quantized ("int8: matmul×… conv×…"), with the
	// graph rewrites applied before.
	Summary string
	// Kept lists the weighted layers left in float32, with the reason.
	Kept []string
	// RelRMS and MaxAbs are the int8 model's differences to the float32
	// one on the check inputs, measured at the first build.
	RelRMS, MaxAbs float64
	// Calibrated is the number of calls the ranges were calibrated on
	// now; 0 when they came from the cache or were not needed.
	Calibrated int
	// Cached reports that the int8 model came from the rewrite cache.
	Cached bool
}

// OpenInt8 quantizes the UNet as q says (see Int8), after the graph
// rewrites o names, keeps the result in o.RewriteCache (weights stored as
// int8, so the session's resident memory falls too) and opens it. With
// q.Conv, the activation ranges come from the cache or, failing that,
// from running the model on calls (ErrNeedCalls when calls is empty).
// A model that cannot be quantized gives an error wrapping ErrInt8; it is
// never silently loaded in float32.
func (m *Signature) OpenInt8(ctx context.Context, o session.Options, q Int8, calls *Calls) (*Model, Int8Report, error) {
	return m.openInt8(ctx, o, q, calls, nil)
}

// OpenInt8StepCache is OpenInt8 and OpenStepCache together: the UNet is
// quantized first, then the int8 graph is split for step caching (see
// StepCache), so that the full and the shallow model share one int8
// weight file and the shallow path runs the same int8 kernels as the full
// one. The split is proven at open as OpenStepCache's is, against the
// int8 model: the shallow model fed the full model's features must give
// the full model's prediction within session.RewriteTolerance; the full
// model must stay within q.MaxRelError of the float32 UNet, as OpenInt8's
// model must. Unlike OpenStepCache it does not fall back to the graph
// without rewrites: a refused split fails with an error wrapping ErrInt8.
func (m *Signature) OpenInt8StepCache(ctx context.Context, o session.Options, q Int8, calls *Calls, c StepCache) (*Model, Int8Report, error) {
	if err := c.Check(); err != nil {
		return nil, Int8Report{}, err
	}
	if c.Branch == 0 {
		c.Branch = DefaultStepCacheBranch
	}
	return m.openInt8(ctx, o, q, calls, &c)
}

func (m *Signature) openInt8(ctx context.Context, o session.Options, q Int8, calls *Calls, sc *StepCache) (*Model, Int8Report, error) {
	var rep Int8Report
	for _, v := range m.ins {
		if v.DType == ort.Float16 {
			return nil, rep, fmt.Errorf("%w: %s: input %s is float16: int8 quantizes float32 graphs only", ErrInt8, m.path, v.Name)
		}
	}
	if o.RewriteCache == "" {
		return nil, rep, fmt.Errorf("%w: no rewrite cache to keep the int8 model in", ErrInt8)
	}
	plan, err := rewrite.Int8Plan(o.Rewrites, rewrite.QuantizeOptions{MatMul: true, Conv: q.Conv, StaticOnly: true})
	if err != nil {
		return nil, rep, fmt.Errorf("unet: %w", err)
	}
	log := cmp.Or(o.Logger, slog.New(slog.DiscardHandler))
	if q.Conv {
		ranges, ok := rewrite.CachedRanges(m.path, q.CalibrationID, o.RewriteCache)
		if !ok {
			if calls == nil || calls.Len() == 0 {
				return nil, rep, ErrNeedCalls
			}
			var err error
			if ranges, err = m.calibrate(ctx, calls, o); err != nil {
				return nil, rep, err
			}
			rep.Calibrated = calls.Len()
			if err := rewrite.SaveRanges(m.path, q.CalibrationID, o.RewriteCache, ranges); err != nil {
				log.Warn("unet: int8: calibration ranges not cached", "error", err)
			}
		}
		plan.Int8.Ranges = rewrite.WidenRanges(ranges, q.margin())
	}
	if sc != nil {
		plan.StepCache = sc.Branch
	}
	built, err := rewrite.Build(m.path, plan, o.RewriteCache)
	if err != nil {
		return nil, rep, fmt.Errorf("%w: %v", ErrInt8, err)
	}
	rep.Cached, rep.Kept, rep.Summary = built.Cached, built.Int8.Kept, built.Summary()
	if sc != nil {
		rep.Summary += "; " + built.Split.String()
	}
	if !built.Int8.Changed() {
		return nil, rep, fmt.Errorf("%w: %s: no layer could be quantized (%d kept in float32)", ErrInt8, m.path, len(built.Int8.Kept))
	}
	if built.Checked == nil {
		fig, err := m.checkInt8(ctx, built, o)
		if err != nil {
			return nil, rep, err
		}
		if err := built.MarkChecked(fig); err != nil {
			log.Warn("unet: int8: check not cached", "error", err)
		}
	}
	rep.RelRMS, rep.MaxAbs = built.Checked["rel_rms"], built.Checked["max_abs"]
	if !(rep.RelRMS <= q.maxRel()) {
		return nil, rep, fmt.Errorf("%w: %s: int8 output differs from float32's by %.3g (relative RMS), more than %g", ErrInt8, m.path, rep.RelRMS, q.maxRel())
	}
	if sc != nil {
		if d := built.Checked["shallow_max_abs"]; !(d <= session.RewriteTolerance) {
			return nil, rep, fmt.Errorf("%w: %s: int8 step cache split (%s) refused: the shallow model with fresh features differs from the full one by %g (tolerance %g)",
				ErrInt8, m.path, built.Split, d, session.RewriteTolerance)
		}
	}
	oq := o
	oq.Rewrites = nil // the built graph has them
	var mod *Model
	if sc != nil {
		mod, err = m.openSplit(ctx, oq, built, *sc)
	} else {
		var sig *Signature
		if sig, err = ReadSignature(built.Path); err == nil {
			mod, err = sig.Open(ctx, oq)
		}
	}
	if err != nil {
		return nil, rep, err
	}
	mod.Loaded.Rewrites = rep.Summary
	log.Info("unet: int8", "quantized", rep.Summary, "kept_float32", len(rep.Kept), "rel_rms", rep.RelRMS,
		"calibrated_calls", rep.Calibrated, "cached", rep.Cached, "path", built.Path)
	return mod, rep, nil
}

// checkInt8 compares the built int8 model with the float32 one on the
// example inputs (rel_rms, max_abs) and, for a step-cache split, its
// shallow model fed the full model's features with the full model
// (shallow_max_abs).
func (m *Signature) checkInt8(ctx context.Context, b *rewrite.Built, o session.Options) (map[string]float64, error) {
	oo := ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.Threads}
	if b.ShallowPath != "" {
		fig, err := m.checkSplit(ctx, b, oo)
		if err != nil {
			return nil, fmt.Errorf("%w: check: %v", ErrInt8, err)
		}
		return fig, nil
	}
	in, err := m.exampleInputs()
	if err != nil {
		return nil, err
	}
	e, err := rewrite.Compare(ctx, m.path, b.Path, in, oo)
	if err != nil {
		return nil, fmt.Errorf("%w: check: %v", ErrInt8, err)
	}
	return map[string]float64{"rel_rms": e.RelRMS, "max_abs": e.MaxAbs}, nil
}

// calibrate returns the ranges of the convolutions' inputs and outputs on
// the recorded calls, the model opened on the CPU with o's threads.
func (m *Signature) calibrate(ctx context.Context, calls *Calls, o session.Options) (map[string]rewrite.Range, error) {
	b, err := os.ReadFile(m.path)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	g, err := onnxpb.Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("unet: %s: %w", m.path, err)
	}
	values := rewrite.ConvValues(g)
	g, b = nil, nil
	calls.mu.Lock()
	feeds := slices.Clone(calls.feeds)
	calls.mu.Unlock()
	rs, err := rewrite.Calibrate(ctx, m.path, values, feeds, ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.Threads})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInt8, err)
	}
	return rs, nil
}
