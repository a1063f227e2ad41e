package unet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// StepCache configures DeepCache-style step caching (Ma et al. 2023):
// the UNet is split at open into a full model, which also returns the
// deep features feeding one skip connection of its up path, and a shallow
// model, which takes those features and runs only the first layers, that
// skip connection and the last up-blocks. A denoising loop runs the full
// model every Interval-th step and the shallow model on the features of
// the last full step in between.
type StepCache struct {
	// Interval is the number of steps one full call serves (itself
	// included): 1 runs the full model at every step; 3 runs it at steps
	// 0, 3, 6, … and the shallow model at the others.
	Interval int
	// Branch is the skip connection cut, counted from the shallowest
	// (1, DeepCache's usual choice, leaves the smallest shallow path);
	// 0 means DefaultStepCacheBranch.
	Branch int
}

// DefaultStepCacheBranch is the cut a StepCache without one gets: 2, the
// one whose images stayed within 3 points of the uncached ones on every
// scheduler of the trained default model's quality grid at interval 3
// (branch 1 lost up to 7; BENCHMARKS.md, "Step caching"). It costs a
// little speed: on the SD 1.5 architecture 2.0× at 50 steps instead of
// 2.25×.
const DefaultStepCacheBranch = 2

// stepCache is a loaded step-cache split: the shallow session beside the
// Model's full one.
type stepCache struct {
	StepCache
	shallow *ort.Session
	feature ort.IOInfo // the full model's extra output, the shallow model's extra input
}

// Check verifies a step-cache configuration.
func (c StepCache) Check() error {
	if c.Interval < 1 {
		return fmt.Errorf("unet: step cache interval %d, want ≥ 1", c.Interval)
	}
	if c.Branch < 0 {
		return fmt.Errorf("unet: step cache branch %d, want ≥ 1 (or 0 for the default)", c.Branch)
	}
	return nil
}

// OpenStepCache loads the UNet split for step caching (see StepCache).
// The split, with o's rewrites applied first, is built once into
// o.RewriteCache, and proven on the model's example inputs before use:
// the full model must give the original's prediction and the shallow
// model, fed the full model's features, the same prediction again, each
// within session.RewriteTolerance. Where the rewrites break that, the
// split is built without them. Only a float32 UNet can be split. The
// Model's Predict methods run the full model; PredictStep runs either.
// The caller must Close the Model.
func (m *Signature) OpenStepCache(ctx context.Context, o session.Options, c StepCache) (*Model, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	if c.Branch == 0 {
		c.Branch = DefaultStepCacheBranch
	}
	for _, v := range append(m.io.Inputs[m.sample:m.sample+1], m.io.Outputs[0]) {
		if v.ElemType != onnxpb.Float {
			return nil, fmt.Errorf("unet: step caching needs a float32 UNet, %s is not", v.Name)
		}
	}
	if o.RewriteCache == "" {
		return nil, errors.New("unet: step caching needs a rewrite cache folder for its split models")
	}
	var rs []rewrite.Rewrite
	for _, name := range o.Rewrites {
		r, err := rewrite.Parse(name)
		if err != nil {
			return nil, fmt.Errorf("unet: %w", err)
		}
		rs = append(rs, r...)
	}
	b, err := m.buildStepCache(ctx, o, rs, c.Branch)
	if err != nil && len(rs) > 0 {
		if o.Logger != nil {
			o.Logger.Warn("unet: step cache split with rewrites refused, splitting the original graph", "error", err)
		}
		b, err = m.buildStepCache(ctx, o, nil, c.Branch)
	}
	if err != nil {
		return nil, err
	}
	m2, err := m.openSplit(ctx, o, b, c)
	if err != nil {
		return nil, err
	}
	if o.Logger != nil {
		o.Logger.Info("unet: step cache", "split", m2.Loaded.Rewrites, "interval", c.Interval, "cached", b.Cached, "checked", b.Checked, "path", b.Path)
	}
	return m2, nil
}

// openSplit opens the full and the shallow model of the split b.
func (m *Signature) openSplit(ctx context.Context, o session.Options, b *rewrite.Built, c StepCache) (*Model, error) {
	feature, err := featureInfo(b.Path)
	if err != nil {
		return nil, err
	}
	so := ort.FromSession(o)
	full, err := ort.Open(ctx, b.Path, m.ins, []ort.IOInfo{m.outs[0], feature}, so)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	shallow, err := ort.Open(ctx, b.ShallowPath, append(m.ins[:len(m.ins):len(m.ins)], feature), m.outs[:1], so)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("unet: %w", err), full.Close())
	}
	what := b.Split.String()
	if b.Rewrites.Changed() {
		what = b.Rewrites.String() + "; " + what
	}
	return &Model{Signature: m, s: full, Loaded: session.Loaded{File: b.Path, Rewrites: what},
		cache: &stepCache{StepCache: c, shallow: shallow, feature: feature}}, nil
}

// featureInfo reads the deep-feature output of the step cache's full model
// at path.
func featureInfo(path string) (ort.IOInfo, error) {
	_, outs, err := ort.ReadIO(path)
	if err != nil {
		return ort.IOInfo{}, fmt.Errorf("unet: %w", err)
	}
	for _, v := range outs {
		if v.Name == rewrite.FeatureInput {
			return v, nil
		}
	}
	return ort.IOInfo{}, fmt.Errorf("unet: the step cache's full model has no %s output", rewrite.FeatureInput)
}

// buildStepCache builds (or finds) the split with rewrites rs and checks
// it once, recording the figures in the cache entry.
func (m *Signature) buildStepCache(ctx context.Context, o session.Options, rs []rewrite.Rewrite, branch int) (*rewrite.Built, error) {
	b, err := rewrite.Build(m.path, rewrite.Plan{Rewrites: rs, StepCache: branch}, o.RewriteCache)
	if err != nil {
		return nil, fmt.Errorf("unet: step cache: %w", err)
	}
	if b.Checked == nil {
		fig, err := m.checkSplit(ctx, b, ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.Threads})
		if err != nil {
			return nil, err
		}
		if err := b.MarkChecked(fig); err != nil && o.Logger != nil {
			o.Logger.Warn("unet: step cache: cache", "error", err)
		}
	}
	full, shallow := b.Checked["full_max_abs"], b.Checked["shallow_max_abs"]
	if !(full <= session.RewriteTolerance && shallow <= session.RewriteTolerance) {
		return nil, fmt.Errorf("unet: step cache split (%s) refused: the full model differs from the original by %g, the shallow one with fresh features by %g (tolerance %g)",
			b.Rewrites, full, shallow, session.RewriteTolerance)
	}
	return b, nil
}

// checkSplit runs the original, the full and the shallow model on the
// example inputs and returns their largest differences.
func (m *Signature) checkSplit(ctx context.Context, b *rewrite.Built, o ort.Options) (map[string]float64, error) {
	in, err := m.exampleInputs()
	if err != nil {
		return nil, err
	}
	feature, err := featureInfo(b.Path)
	if err != nil {
		return nil, err
	}
	run := func(path string, ins, outs []ort.IOInfo, in []ort.Tensor) ([]ort.Tensor, error) {
		s, err := ort.Open(ctx, path, ins, outs, o)
		if err != nil {
			return nil, fmt.Errorf("unet: step cache check: %w", err)
		}
		out := make([]ort.Tensor, len(outs))
		err = s.Run(ctx, in, out)
		if err = errors.Join(err, s.Close()); err != nil {
			return nil, fmt.Errorf("unet: step cache check: %w", err)
		}
		return out, nil
	}
	want, err := run(m.path, m.ins, m.outs[:1], in)
	if err != nil {
		return nil, err
	}
	full, err := run(b.Path, m.ins, []ort.IOInfo{m.outs[0], feature}, in)
	if err != nil {
		return nil, err
	}
	shallow, err := run(b.ShallowPath, append(m.ins[:len(m.ins):len(m.ins)], feature), m.outs[:1], append(in, full[1]))
	if err != nil {
		return nil, err
	}
	p0, p1, p2 := want[0].Data.([]float32), full[0].Data.([]float32), shallow[0].Data.([]float32)
	d := rewrite.Diff(p0, p1)
	return map[string]float64{
		"full_max_abs":    d.MaxAbs,
		"shallow_max_abs": rewrite.Diff(p1, p2).MaxAbs,
		// the int8 split's check reads these as OpenInt8's
		"rel_rms": d.RelRMS,
		"max_abs": d.MaxAbs,
	}, nil
}

// StepCacheInterval returns the step cache's interval, or 0 for a model
// opened without step caching.
func (m *Model) StepCacheInterval() int {
	if m.cache == nil {
		return 0
	}
	return m.cache.Interval
}

// PredictStep is one UNet call of step caching. textEmbeds and timeIDs
// (SDXL's added conditioning) and timestepCond (a latent consistency
// model's) are nil for models that take none. With features nil it runs
// the full model and returns, beside the prediction, the deep features
// [batch, c, h', w'] of each row of sample; with features (rows of an
// earlier full call's, row for row with sample), it runs the shallow
// model on them and returns nil features. A model opened without step
// caching runs as Predict does and returns nil features.
func (m *Model) PredictStep(ctx context.Context, sample *tensor.Dense, ts []float64, context_, textEmbeds, timeIDs, timestepCond, features *tensor.Dense) (pred, deep *tensor.Dense, err error) {
	var add *Added
	if textEmbeds != nil || timeIDs != nil || timestepCond != nil {
		add = &Added{TextEmbeds: textEmbeds, TimeIDs: timeIDs, TimestepCond: timestepCond}
	}
	if features != nil && m.cache == nil {
		return nil, nil, fmt.Errorf("%w: features given to a UNet opened without step caching", ErrInput)
	}
	return m.run(ctx, sample, ts, context_, add, features)
}

// featureRows returns rows [r, r+n) of the features as an input tensor.
func (c *stepCache) featureRows(f *tensor.Dense, b, r, n int) (ort.Tensor, error) {
	s := f.Shape()
	if len(s) != 4 || s[0] != b {
		return ort.Tensor{}, fmt.Errorf("%w: features of shape %v for batch %d", ErrInput, s, b)
	}
	rn := s[1] * s[2] * s[3]
	d := f.Data().([]float32)
	return ort.Tensor{Shape: []int64{int64(n), int64(s[1]), int64(s[2]), int64(s[3])}, Data: d[r*rn : (r+n)*rn]}, nil
}

// gather appends the features a full call returned for rows [r, r+n) to
// all, checking that every call's rows have the same shape.
func gather(all []float32, shape []int64, t ort.Tensor, n int) ([]float32, []int64, error) {
	d, ok := t.Data.([]float32)
	if !ok || len(t.Shape) != 4 || t.Shape[0] != int64(n) || int64(len(d)) != ort.Elems(t.Shape) {
		return nil, nil, fmt.Errorf("unet: step cache features of shape %v for %d rows", t.Shape, n)
	}
	if shape != nil && (shape[1] != t.Shape[1] || shape[2] != t.Shape[2] || shape[3] != t.Shape[3]) {
		return nil, nil, fmt.Errorf("unet: step cache features of shape %v, then %v", shape, t.Shape)
	}
	if shape == nil {
		shape = []int64{0, t.Shape[1], t.Shape[2], t.Shape[3]}
	}
	shape[0] += int64(n)
	return append(all, d...), shape, nil
}

// warmShallow warms the step cache's shallow model up on the features of
// one full call at the warm-up's inputs.
func (m *Model) warmShallow(ctx context.Context, w session.Warmup, x *tensor.Dense, ts []float64, c *tensor.Dense, add *Added) ([]time.Duration, error) {
	_, deep, err := m.run(ctx, x, ts, c, add, nil)
	if err != nil {
		return nil, err
	}
	return ort.Repeat(ctx, func(ctx context.Context) error {
		_, _, err := m.run(ctx, x, ts, c, add, deep)
		return err
	}, w.MaxCalls, w.Steady)
}

func (c *stepCache) close() error {
	if c == nil {
		return nil
	}
	return c.shallow.Close()
}
