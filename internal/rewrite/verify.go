package rewrite

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// Open opens the rewritten model: from Path when there is one, else from
// Data with the external data read from ExternalDir. The caller must Close
// the session.
func (r *Result) Open(ctx context.Context, o ort.Options) (*ort.Session, error) {
	ins, outs, err := ort.ReadIO(r.Source)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	return r.open(ctx, ins, outs, o)
}

// open is Open for a model whose inputs and outputs are known.
func (r *Result) open(ctx context.Context, ins, outs []ort.IOInfo, o ort.Options) (*ort.Session, error) {
	if r.Path != "" {
		return ort.Open(ctx, r.Path, ins, outs, o)
	}
	return ort.OpenData(ctx, r.Source+" (rewritten)", r.Data, r.ExternalDir, ins, outs, o)
}

// Verify runs the original model and the rewritten one, one after the
// other (never both in memory), on the inputs in (one Tensor per input, in
// the model's order) and returns the largest absolute difference between
// their outputs; NaN in either gives +Inf. Float16 outputs are not
// supported.
func Verify(ctx context.Context, r *Result, in []ort.Tensor, o ort.Options) (maxDiff float64, err error) {
	ins, outs, err := ort.ReadIO(r.Source)
	if err != nil {
		return 0, fmt.Errorf("rewrite: %w", err)
	}
	return verify(ctx, r, ins, outs, in, o)
}

// verify is Verify for a model whose inputs and outputs are known.
func verify(ctx context.Context, r *Result, ins, outs []ort.IOInfo, in []ort.Tensor, o ort.Options) (maxDiff float64, err error) {
	for _, v := range outs {
		if v.DType != ort.Float32 {
			return 0, fmt.Errorf("rewrite: verify %s: output %s is %s, only float32 is compared", r.Source, v.Name, v.DType)
		}
	}
	run := func(s *ort.Session) (out []ort.Tensor, err error) {
		defer func() { err = errors.Join(err, s.Close()) }()
		out = make([]ort.Tensor, len(outs))
		if err := s.Run(ctx, in, out); err != nil {
			return nil, err
		}
		return out, nil
	}
	s, err := ort.Open(ctx, r.Source, ins, outs, o)
	if err != nil {
		return 0, fmt.Errorf("rewrite: verify: %w", err)
	}
	want, err := run(s)
	if err != nil {
		return 0, fmt.Errorf("rewrite: verify: %w", err)
	}
	if s, err = r.open(ctx, ins, outs, o); err != nil {
		return 0, fmt.Errorf("rewrite: verify: %w", err)
	}
	got, err := run(s)
	if err != nil {
		return 0, fmt.Errorf("rewrite: verify: %w", err)
	}
	for i := range want {
		a, b := want[i].Data.([]float32), got[i].Data.([]float32)
		if len(a) != len(b) {
			return math.Inf(1), nil
		}
		for j := range a {
			d := math.Abs(float64(a[j]) - float64(b[j]))
			if math.IsNaN(d) {
				return math.Inf(1), nil
			}
			maxDiff = max(maxDiff, d)
		}
	}
	return maxDiff, nil
}
