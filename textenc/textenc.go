package textenc

import (
	"context"
	"errors"
	"fmt"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// Model is a loaded text encoder. Encode is safe for concurrent use; the
// caller must Close the model.
type Model struct {
	s      *ort.Session
	hidden int   // hidden size, or 0 when the model leaves it dynamic
	seq    int64 // fixed sequence length, or -1
	batch  int64 // fixed batch, or -1
}

// Open loads the text encoder at path (text_encoder/model.onnx). It checks
// the model's signature: an `input_ids` input of int32 or int64 with shape
// [batch, sequence], and a `last_hidden_state` output of shape
// [batch, sequence, hidden].
func Open(ctx context.Context, path string, o ort.Options) (*Model, error) {
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	m, err := check(path, ins, outs)
	if err != nil {
		return nil, err
	}
	var last ort.IOInfo
	for _, v := range outs {
		if v.Name == "last_hidden_state" {
			last = v
		}
	}
	m.s, err = ort.Open(ctx, path, ins, []ort.IOInfo{last}, o)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	return m, nil
}

// SignatureError reports a model whose inputs or outputs are not those of a
// text encoder.
type SignatureError struct {
	Path   string
	Reason string
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("textenc: %s: %s", e.Path, e.Reason)
}

func check(path string, ins, outs []ort.IOInfo) (*Model, error) {
	bad := func(format string, args ...any) error {
		return &SignatureError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	if len(ins) != 1 || ins[0].Name != "input_ids" {
		return nil, bad("want one input named input_ids, have %v", ins)
	}
	in := ins[0]
	if in.DType != ort.Int32 && in.DType != ort.Int64 {
		return nil, bad("input_ids is %s, want int32 or int64", in.DType)
	}
	if len(in.Shape) != 2 {
		return nil, bad("input_ids has shape %v, want [batch, sequence]", in.Shape)
	}
	var last *ort.IOInfo
	for i := range outs {
		if outs[i].Name == "last_hidden_state" {
			last = &outs[i]
		}
	}
	if last == nil {
		return nil, bad("no last_hidden_state output (have %v)", outs)
	}
	if last.DType != ort.Float32 && last.DType != ort.Float16 {
		return nil, bad("last_hidden_state is %s, want float32 or float16", last.DType)
	}
	if len(last.Shape) != 3 {
		return nil, bad("last_hidden_state has shape %v, want [batch, sequence, hidden]", last.Shape)
	}
	m := &Model{batch: in.Shape[0], seq: in.Shape[1]}
	if h := last.Shape[2]; h > 0 {
		m.hidden = int(h)
	} else if last.DType == ort.Float16 {
		return nil, bad("float16 last_hidden_state needs a fixed hidden size, have %v", last.Shape)
	}
	return m, nil
}

// HiddenSize returns the width of each token's hidden state, or 0 when the
// model does not declare it.
func (m *Model) HiddenSize() int { return m.hidden }

// FixedBatch returns the batch size the model requires, or 0 when any batch
// size works.
func (m *Model) FixedBatch() int {
	if m.batch > 0 {
		return int(m.batch)
	}
	return 0
}

// Session returns the underlying session, for statistics.
func (m *Model) Session() *ort.Session { return m.s }

// ErrInput reports ids that do not fit the model.
var ErrInput = errors.New("textenc: bad input")

// Encode runs the encoder on batch rows of token ids (ids holds batch rows
// of equal length, row-major) and returns the hidden states as a
// [batch, sequence, hidden] tensor that the caller owns. A model with a
// fixed batch size of 1 is run once per row.
func (m *Model) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	if batch <= 0 || len(ids) == 0 || len(ids)%batch != 0 {
		return nil, fmt.Errorf("%w: %d ids for batch %d", ErrInput, len(ids), batch)
	}
	seq := len(ids) / batch
	if m.seq > 0 && int64(seq) != m.seq {
		return nil, fmt.Errorf("%w: sequence of %d tokens, model wants %d", ErrInput, seq, m.seq)
	}
	step := batch // rows per call
	if m.batch > 0 {
		step = int(m.batch)
		if batch%step != 0 {
			return nil, fmt.Errorf("%w: batch %d is not a multiple of the model's fixed batch %d", ErrInput, batch, step)
		}
	}
	var all []float32
	hidden := m.hidden
	for r := 0; r < batch; r += step {
		out := []ort.Tensor{{}}
		if hidden > 0 {
			out[0].Shape = []int64{int64(step), int64(seq), int64(hidden)}
			if step == batch {
				all = make([]float32, batch*seq*hidden)
				out[0].Data = all
			}
		}
		in := []ort.Tensor{{Shape: []int64{int64(step), int64(seq)}, Data: ids[r*seq : (r+step)*seq]}}
		if err := m.s.Run(ctx, in, out); err != nil {
			return nil, fmt.Errorf("textenc: %w", err)
		}
		d := out[0].Data.([]float32)
		if hidden == 0 {
			hidden = int(out[0].Shape[2])
		}
		if step != batch {
			all = append(all, d...)
		} else {
			all = d
		}
	}
	if len(all) != batch*seq*hidden {
		return nil, fmt.Errorf("textenc: model returned %d values, want %d", len(all), batch*seq*hidden)
	}
	return tensor.New(tensor.WithShape(batch, seq, hidden), tensor.WithBacking(all)), nil
}

// Close frees the model. It waits for calls in flight and is idempotent.
func (m *Model) Close() error { return m.s.Close() }
