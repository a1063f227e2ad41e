package pipeline

import (
	"context"
	"fmt"

	"gorgonia.org/tensor"
)

// StepCacheDenoiser is a UNet split for DeepCache-style step caching: a
// full call also returns the deep features feeding one skip connection,
// and a shallow call reuses them, running only the layers above it.
// When the Components' UNet is one with a positive StepCacheInterval N,
// the denoise stage runs the full model once every N steps and the
// shallow model on each image's features of that step in between.
// Features are kept per image (one row per guidance branch), so images
// of different requests that share UNet calls (dynamic batching) each
// reuse their own; a call runs the shallow model only when every row of
// it has features younger than N steps, otherwise the full model, which
// refreshes them all. Implementations must be safe for concurrent use.
type StepCacheDenoiser interface {
	Denoiser
	// StepCacheInterval returns N; 0 turns step caching off.
	StepCacheInterval() int
	// PredictStep runs the full model when features is nil and returns
	// the deep features [rows, c, h, w] of each row of sample beside the
	// prediction; with features, row for row with sample, the shallow
	// model on them. textEmbeds and timeIDs (added conditioning) and
	// timestepCond (a guidance embedding) are nil for UNets without them.
	PredictStep(ctx context.Context, sample *tensor.Dense, ts []float64, cond, textEmbeds, timeIDs, timestepCond, features *tensor.Dense) (pred, deep *tensor.Dense, err error)
}

// deepCache is one image's step-cache features: a row per guidance branch
// (uncond, then cond, when guided), from the full call of step at.
type deepCache struct {
	rows  []float32
	shape []int // one row's [c, h, w]
	at    int
}

// stepCacher returns the UNet as a StepCacheDenoiser and its interval
// when step caching applies to batch b, else nil: per-row LoRAs run the
// UNet's own LoRA path.
func (p *Pipeline) stepCacher(b *unetBatch) (StepCacheDenoiser, int) {
	sc, ok := p.c.UNet.(StepCacheDenoiser)
	if !ok {
		return nil, 0
	}
	n := sc.StepCacheInterval()
	if n < 1 || b.loraRows() != nil {
		return nil, 0
	}
	return sc, n
}

// cachedPredict is the UNet call of step i for batch b (k rows per image)
// under step caching with interval n.
func (p *Pipeline) cachedPredict(ctx context.Context, sc StepCacheDenoiser, n int, b *unetBatch, sample *tensor.Dense, k, i int, t float64) (*tensor.Dense, error) {
	var tc *tensor.Dense
	if p.c.GuidanceEmbedding > 0 {
		tc = p.guidanceRows(b)
	}
	fresh := n > 1
	for _, it := range b.items {
		fresh = fresh && it.deep != nil && i-it.deep.at < n
	}
	if fresh {
		// every image's rows in the batch's order: [uncond of every
		// image..., cond of every image...] when guided
		s := b.items[0].deep.shape
		row := s[0] * s[1] * s[2]
		f := make([]float32, 0, k*len(b.items)*row)
		for r := range k {
			for _, it := range b.items {
				if len(it.deep.rows) != k*row {
					return nil, fmt.Errorf("pipeline: step cache: an image has %d feature values, want %d", len(it.deep.rows), k*row)
				}
				f = append(f, it.deep.rows[r*row:(r+1)*row]...)
			}
		}
		feat := tensor.New(tensor.WithShape(k*len(b.items), s[0], s[1], s[2]), tensor.WithBacking(f))
		pred, _, err := sc.PredictStep(ctx, sample, []float64{t}, b.cond, b.textEmbeds, b.timeIDs, tc, feat)
		if err == nil {
			for _, j := range b.jobs {
				j.metrics.ShallowSteps++
			}
		}
		return pred, err
	}
	pred, deep, err := sc.PredictStep(ctx, sample, []float64{t}, b.cond, b.textEmbeds, b.timeIDs, tc, nil)
	if err != nil {
		return nil, err
	}
	if deep == nil {
		return nil, fmt.Errorf("pipeline: step cache: the full call returned no features")
	}
	ds := deep.Shape()
	if len(ds) != 4 || ds[0] != k*len(b.items) {
		return nil, fmt.Errorf("pipeline: step cache: the full call returned features %v for %d rows", ds, k*len(b.items))
	}
	d := deep.Data().([]float32)
	row := ds[1] * ds[2] * ds[3]
	nb := len(b.items)
	for m, it := range b.items {
		c := &deepCache{rows: make([]float32, 0, k*row), shape: []int{ds[1], ds[2], ds[3]}, at: i}
		for r := range k {
			c.rows = append(c.rows, d[(r*nb+m)*row:(r*nb+m+1)*row]...)
		}
		it.deep = c
	}
	return pred, nil
}
