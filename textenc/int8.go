package textenc

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// Int8 says how OpenInt8 quantizes a text encoder: every MatMul and Gemm
// with constant weights (the attention projections, the feed-forward
// layers and SDXL's text projection) becomes ONNX Runtime's
// DynamicQuantizeMatMul, which quantizes its activations itself in each
// call (uint8, per tensor) against int8 weights per output column, so no
// calibration is needed. The token and position embeddings (a Gather),
// attention's activation × activation products, the layer norms and the
// activations stay float32.
type Int8 struct {
	// MaxRelError is the largest relative RMS difference to the float32
	// model allowed on the check input (two sequences of random byte-level
	// tokens, every output the model declares); above it OpenInt8 fails.
	// 0 means 0.1: a bound that catches a broken quantization (NaN, wrong
	// scales), not a quality measure.
	MaxRelError float64
}

func (q Int8) maxRel() float64 { return cmp.Or(q.MaxRelError, 0.1) }

// int8MinReduction is the shortest MatMul reduction quantized. A text
// encoder has no sensitive first layer (its input is a Gather), and every
// layer of a real CLIP reduces over 768 to 5120 values; 16 only leaves out
// degenerate ones, and quantizes the 32-wide layers of the tiny test
// models too.
const int8MinReduction = 16

// ErrInt8 reports a text encoder that cannot be quantized (a float16
// graph, or one with nothing to quantize) or whose int8 outputs stray too
// far from float32's.
var ErrInt8 = errors.New("textenc: int8")

// Int8Report says what OpenInt8 did.
type Int8Report struct {
	// Summary says what was quantized ("int8: matmul×… …"), with the graph
	// rewrites applied before.
	Summary string
	// Kept lists the weighted layers left in float32, with the reason.
	Kept []string
	// RelRMS and MaxAbs are the int8 model's differences to the float32
	// one on the check input, measured at the first build.
	RelRMS, MaxAbs float64
	// Cached reports that the int8 model came from the rewrite cache.
	Cached bool
}

// OpenInt8 quantizes the text encoder's MatMuls to int8 (see Int8), after
// the graph rewrites o names, keeps the result in o.RewriteCache by the
// model's content hash (weights stored as int8, so the session's resident
// memory falls too; a later open reuses it and its check) and opens it.
// The Model's Signature is the int8 model's: opening it again (Open)
// loads the int8 model, with the same outputs selected. A model that
// cannot be quantized, or whose int8 outputs differ from float32's by more
// than q.MaxRelError, gives an error wrapping ErrInt8; it is never
// silently loaded in float32. The int8 kernels are ONNX Runtime's CPU
// ones.
func (s *Signature) OpenInt8(ctx context.Context, o session.Options, q Int8) (*Model, Int8Report, error) {
	var rep Int8Report
	if s.int8 != "" {
		return nil, rep, fmt.Errorf("%w: %s is quantized already", ErrInt8, s.path)
	}
	for _, v := range s.all {
		if v.DType != ort.Float32 {
			return nil, rep, fmt.Errorf("%w: %s: output %s is %s: int8 quantizes float32 graphs only", ErrInt8, s.path, v.Name, v.DType)
		}
	}
	if o.RewriteCache == "" {
		return nil, rep, fmt.Errorf("%w: no rewrite cache to keep the int8 model in", ErrInt8)
	}
	plan, err := rewrite.Int8Plan(o.Rewrites, rewrite.QuantizeOptions{MatMul: true, MinReduction: int8MinReduction})
	if err != nil {
		return nil, rep, fmt.Errorf("textenc: %w", err)
	}
	built, err := rewrite.Build(s.path, plan, o.RewriteCache)
	if err != nil {
		return nil, rep, fmt.Errorf("%w: %v", ErrInt8, err)
	}
	rep.Cached, rep.Kept, rep.Summary = built.Cached, built.Int8.Kept, built.Summary()
	if !built.Int8.Changed() {
		return nil, rep, fmt.Errorf("%w: %s: no layer could be quantized (%d kept in float32)", ErrInt8, s.path, len(built.Int8.Kept))
	}
	log := cmp.Or(o.Logger, slog.New(slog.DiscardHandler))
	if built.Checked == nil {
		in, err := s.exampleInputs()
		if err != nil {
			return nil, rep, err
		}
		e, err := rewrite.Compare(ctx, s.path, built.Path, in, ort.Options{LibraryPath: o.LibraryPath, IntraOpThreads: o.Threads})
		if err != nil {
			return nil, rep, fmt.Errorf("%w: check: %v", ErrInt8, err)
		}
		if err := built.MarkChecked(map[string]float64{"rel_rms": e.RelRMS, "max_abs": e.MaxAbs}); err != nil {
			log.Warn("textenc: int8: check not cached", "error", err)
		}
	}
	rep.RelRMS, rep.MaxAbs = built.Checked["rel_rms"], built.Checked["max_abs"]
	if !(rep.RelRMS <= q.maxRel()) {
		return nil, rep, fmt.Errorf("%w: %s: int8 output differs from float32's by %.3g (relative RMS), more than %g", ErrInt8, s.path, rep.RelRMS, q.maxRel())
	}
	io, err := onnxpb.ReadIO(built.Path)
	if err != nil {
		return nil, rep, fmt.Errorf("textenc: %w", err)
	}
	c := *s
	c.path, c.io, c.int8 = built.Path, io, rep.Summary
	m, err := c.Open(ctx, o)
	if err != nil {
		return nil, rep, err
	}
	log.Info("textenc: int8", "quantized", rep.Summary, "kept_float32", len(rep.Kept), "rel_rms", rep.RelRMS,
		"cached", rep.Cached, "path", built.Path)
	return m, rep, nil
}
