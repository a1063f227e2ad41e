package main

import (
	"context"
	"slices"
	"sync"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
)

// interval is a half-open span of time.
type interval struct{ start, end time.Time }

// callRecorder records the intervals of model calls. It is safe for
// concurrent use.
type callRecorder struct {
	mu    sync.Mutex
	calls map[string][]interval
}

func newCallRecorder() *callRecorder { return &callRecorder{calls: map[string][]interval{}} }

func (r *callRecorder) add(name string, start time.Time) {
	end := time.Now()
	r.mu.Lock()
	r.calls[name] = append(r.calls[name], interval{start, end})
	r.mu.Unlock()
}

// reset forgets every call and returns what was recorded.
func (r *callRecorder) reset() map[string][]interval {
	r.mu.Lock()
	defer r.mu.Unlock()
	c := r.calls
	r.calls = map[string][]interval{}
	return c
}

// encoder returns e with its calls recorded, keeping the optional
// interfaces the pipeline asks for (SDXL's pooled, split encoder).
func (r *callRecorder) encoder(e pipeline.Encoder) pipeline.Encoder {
	rec := recEncoder{r, e}
	if p, ok := e.(pipeline.PooledEncoder); ok {
		if s, ok := e.(pipeline.SplitEncoder); ok {
			return recXLEncoder{rec, p, s}
		}
		return recPooledEncoder{rec, p}
	}
	return rec
}

type recEncoder struct {
	r *callRecorder
	e pipeline.Encoder
}

func (e recEncoder) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	defer e.r.add("text_encoder", time.Now())
	return e.e.Encode(ctx, ids, batch)
}

type recPooledEncoder struct {
	recEncoder
	p pipeline.PooledEncoder
}

func (e recPooledEncoder) EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (hidden, pooled *tensor.Dense, err error) {
	defer e.r.add("text_encoder", time.Now())
	return e.p.EncodePooled(ctx, ids, ids2, batch)
}

type recXLEncoder struct {
	recEncoder
	p pipeline.PooledEncoder
	s pipeline.SplitEncoder
}

func (e recXLEncoder) EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (hidden, pooled *tensor.Dense, err error) {
	return recPooledEncoder{e.recEncoder, e.p}.EncodePooled(ctx, ids, ids2, batch)
}

func (e recXLEncoder) HiddenParts() []int { return e.s.HiddenParts() }

// denoiser returns d with its calls recorded, keeping the optional
// interfaces the pipeline asks for (SDXL's added conditioning, a latent
// consistency model's guidance embedding).
func (r *callRecorder) denoiser(d pipeline.Denoiser) pipeline.Denoiser {
	rec := recDenoiser{r, d}
	if a, ok := d.(pipeline.AddedDenoiser); ok {
		return recAdded{rec, a}
	}
	if c, ok := d.(pipeline.CondDenoiser); ok {
		return recCond{rec, c}
	}
	return rec
}

type recDenoiser struct {
	r *callRecorder
	d pipeline.Denoiser
}

func (d recDenoiser) Predict(ctx context.Context, x *tensor.Dense, ts []float64, c *tensor.Dense) (*tensor.Dense, error) {
	defer d.r.add("unet", time.Now())
	return d.d.Predict(ctx, x, ts, c)
}

type recAdded struct {
	recDenoiser
	a pipeline.AddedDenoiser
}

func (d recAdded) PredictAdded(ctx context.Context, x *tensor.Dense, ts []float64, c, textEmbeds, timeIDs *tensor.Dense) (*tensor.Dense, error) {
	defer d.r.add("unet", time.Now())
	return d.a.PredictAdded(ctx, x, ts, c, textEmbeds, timeIDs)
}

type recCond struct {
	recDenoiser
	c pipeline.CondDenoiser
}

func (d recCond) PredictCond(ctx context.Context, x *tensor.Dense, ts []float64, c, timestepCond *tensor.Dense) (*tensor.Dense, error) {
	defer d.r.add("unet", time.Now())
	return d.c.PredictCond(ctx, x, ts, c, timestepCond)
}

func (r *callRecorder) decoder(d pipeline.Decoder) pipeline.Decoder {
	return pipeline.DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		defer r.add("vae_decoder", time.Now())
		return d.Decode(ctx, lat)
	})
}

// coverage returns, for the intervals given, how long at least k of them
// were active at once, for k = 1..len(result). Times are clipped to
// [from, to].
func coverage(ivs []interval, from, to time.Time) []time.Duration {
	type edge struct {
		t time.Time
		d int
	}
	var es []edge
	for _, iv := range ivs {
		s, e := iv.start, iv.end
		if s.Before(from) {
			s = from
		}
		if e.After(to) {
			e = to
		}
		if !e.After(s) {
			continue
		}
		es = append(es, edge{s, +1}, edge{e, -1})
	}
	slices.SortFunc(es, func(a, b edge) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		return a.d - b.d // ends before starts at the same instant
	})
	var out []time.Duration
	active := 0
	var last time.Time
	for _, e := range es {
		if active > 0 {
			for len(out) < active {
				out = append(out, 0)
			}
			d := e.t.Sub(last)
			for k := range active {
				out[k] += d
			}
		}
		active += e.d
		last = e.t
	}
	return out
}

// union returns how long at least one interval was active.
func union(ivs []interval, from, to time.Time) time.Duration {
	c := coverage(ivs, from, to)
	if len(c) == 0 {
		return 0
	}
	return c[0]
}

func sum(ivs []interval) time.Duration {
	var d time.Duration
	for _, iv := range ivs {
		d += iv.end.Sub(iv.start)
	}
	return d
}
