package textenc

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// Signature is what a text encoder's model file declares, read and checked
// without loading its weights. It is a plain value, safe for concurrent
// reads.
type Signature struct {
	path      string
	io        *onnxpb.IO
	ins, outs []ort.IOInfo // input_ids; last_hidden_state
	hidden    int          // hidden size, or 0 when the model leaves it dynamic
	seq       int64        // fixed sequence length, or -1
	batch     int64        // fixed batch, or -1
	vocab     int          // rows of the token embedding, or 0
	positions int          // rows of the position embedding, or 0
	all       []ort.IOInfo // every output the model declares
	pooled    bool         // outs[1] is a pooled embedding (text_embeds)
	int8      string       // what OpenInt8 quantized, for its int8 model; "" for the original
}

// ReadSignature reads the model file at path (text_encoder/model.onnx)
// and checks that it is a text encoder: an `input_ids` input of int32 or
// int64 with shape [batch, sequence], and a `last_hidden_state` output of
// shape [batch, sequence, hidden]. A model with other inputs or outputs
// gives a *session.SignatureError.
func ReadSignature(path string) (*Signature, error) {
	io, ins, outs, err := ort.ReadModel("textenc", path)
	if err != nil {
		return nil, err
	}
	bad := ort.Bad("textenc", path)
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
	s := &Signature{path: path, io: io, ins: ins, outs: []ort.IOInfo{*last}, all: outs, batch: in.Shape[0], seq: in.Shape[1],
		vocab: initializerRows(io, "token_embedding.weight"), positions: initializerRows(io, "position_embedding.weight")}
	if h := last.Shape[2]; h > 0 {
		s.hidden = int(h)
	} else if last.DType == ort.Float16 {
		return nil, bad("float16 last_hidden_state needs a fixed hidden size, have %v", last.Shape)
	}
	return s, nil
}

// initializerRows returns the first dimension of the 2-d initializer whose
// name ends in suffix, or 0 when there is none.
func initializerRows(io *onnxpb.IO, suffix string) int {
	for _, t := range io.Initializers {
		if strings.HasSuffix(t.Name, suffix) && len(t.Dims) == 2 && t.Dims[0] > 0 {
			return int(t.Dims[0])
		}
	}
	return 0
}

// Path returns the model file the signature was read from.
func (s *Signature) Path() string { return s.path }

// HiddenSize returns the width of each token's hidden state, or 0 when the
// model does not declare it.
func (s *Signature) HiddenSize() int { return s.hidden }

// SequenceLength returns the number of tokens the model requires per
// sequence, or 0 when any length works.
func (s *Signature) SequenceLength() int { return max(int(s.seq), 0) }

// FixedBatch returns the batch size the model requires, or 0 when any batch
// size works.
func (s *Signature) FixedBatch() int { return max(int(s.batch), 0) }

// VocabSize returns the number of rows of the token embedding (the ids the
// model takes), or 0 when the model does not show it.
func (s *Signature) VocabSize() int { return s.vocab }

// Positions returns the number of rows of the position embedding (the
// longest sequence), or 0 when the model does not show it.
func (s *Signature) Positions() int { return s.positions }

// ExternalData lists the external data files the model reads its weights
// from.
func (s *Signature) ExternalData() []session.ExternalFile { return ort.ExternalData(s.io) }

// exampleIDs returns rows sequences of byte-level token ids (every CLIP
// vocabulary has the 256 of them) between CLIP's BOS and EOS, the two
// last ids of its vocabulary.
func (s *Signature) exampleIDs(rows int, seed uint64) ([]int32, int) {
	seq := 77
	if s.seq > 0 {
		seq = int(s.seq)
	}
	r := rand.New(rand.NewPCG(seed, 11))
	ids := make([]int32, rows*seq)
	for i := range ids {
		ids[i] = int32(r.IntN(256))
		if s.vocab > 256+2 && i%seq == 0 {
			ids[i] = int32(s.vocab - 2)
		} else if s.vocab > 256+2 && i%seq == seq-1 {
			ids[i] = int32(s.vocab - 1)
		}
	}
	return ids, seq
}

// exampleInputs are the inputs a rewrite of the model is verified on.
func (s *Signature) exampleInputs() ([]ort.Tensor, error) {
	ids, seq := s.exampleIDs(2, 1)
	return []ort.Tensor{{Shape: []int64{2, int64(seq)}, Data: ids}}, nil
}

// Open loads the text encoder (the int8 one for the Signature of a Model
// OpenInt8 opened). The caller must Close the Model.
func (s *Signature) Open(ctx context.Context, o session.Options) (*Model, error) {
	if s.int8 != "" { // OpenInt8's model: its graph has the rewrites already
		o.Rewrites = nil
	}
	sess, loaded, err := rewrite.Open(ctx, rewrite.Source{Path: s.path, IO: s.io, Inputs: s.exampleInputs}, s.outs, o)
	if err != nil {
		return nil, fmt.Errorf("textenc: %w", err)
	}
	if s.int8 != "" {
		loaded.Rewrites = s.int8
	}
	return &Model{Signature: s, s: sess, Loaded: loaded}, nil
}

// Open loads the text encoder at path (text_encoder/model.onnx): it reads
// and checks the signature (ReadSignature), then loads the weights. The
// caller must Close the Model.
func Open(ctx context.Context, path string, o session.Options) (*Model, error) {
	return ort.OpenFile(ctx, path, o, ReadSignature)
}

// Model is a loaded text encoder. Encode is safe for concurrent use; the
// caller must Close the model.
type Model struct {
	*Signature     // what the model file declares
	session.Loaded // how it was loaded
	s              *ort.Session
}

// Stats reports how many calls the session completed and the time spent
// inside ONNX Runtime. It is safe for concurrent use.
func (m *Model) Stats() (calls int64, busy time.Duration) { return m.s.Stats() }

// ErrInput reports ids that do not fit the model.
var ErrInput = errors.New("textenc: bad input")

// Encode runs the encoder on batch rows of token ids (ids holds batch rows
// of equal length, row-major) and returns the hidden states as a
// [batch, sequence, hidden] tensor that the caller owns. A model with a
// fixed batch size of 1 is run once per row.
func (m *Model) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	outs, err := m.run(ctx, ids, batch)
	if err != nil {
		return nil, err
	}
	return outs[0], nil
}

// run calls the model on batch rows of ids and returns each selected
// output, the hidden states first, batch rows each.
func (m *Model) run(ctx context.Context, ids []int32, batch int) ([]*tensor.Dense, error) {
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
	all := make([][]float32, len(m.outs))
	shapes := make([][]int64, len(m.outs))
	hidden := m.hidden
	for r := 0; r < batch; r += step {
		out := make([]ort.Tensor, len(m.outs))
		if hidden > 0 {
			out[0].Shape = []int64{int64(step), int64(seq), int64(hidden)}
			if step == batch {
				out[0].Data = make([]float32, batch*seq*hidden)
			}
		}
		for k := 1; k < len(out); k++ { // [batch, width] outputs of a fixed width
			if s := m.outs[k].Shape; len(s) == 2 && s[1] > 0 {
				out[k].Shape = []int64{int64(step), s[1]}
			}
		}
		in := []ort.Tensor{{Shape: []int64{int64(step), int64(seq)}, Data: ids[r*seq : (r+step)*seq]}}
		if err := m.s.Run(ctx, in, out); err != nil {
			return nil, fmt.Errorf("textenc: %w", err)
		}
		if hidden == 0 {
			hidden = int(out[0].Shape[2])
		}
		for k := range out {
			if d := out[k].Data.([]float32); step == batch {
				all[k] = d
			} else {
				all[k] = append(all[k], d...)
			}
			shapes[k] = out[k].Shape
		}
	}
	if len(all[0]) != batch*seq*hidden {
		return nil, fmt.Errorf("textenc: model returned %d values, want %d", len(all[0]), batch*seq*hidden)
	}
	res := []*tensor.Dense{tensor.New(tensor.WithShape(batch, seq, hidden), tensor.WithBacking(all[0]))}
	for k := 1; k < len(all); k++ {
		if s := shapes[k]; len(s) != 2 || int(s[1])*batch != len(all[k]) {
			return nil, fmt.Errorf("textenc: %s has shape %v, want [%d, width]", m.outs[k].Name, s, step)
		}
		res = append(res, tensor.New(tensor.WithShape(batch, int(shapes[k][1])), tensor.WithBacking(all[k])))
	}
	return res, nil
}

// WarmUp calls the encoder on a guided step's two sequences until its
// call time is steady (see session.Warmup; the image size does not
// matter to a text encoder) and returns each call's duration.
func (m *Model) WarmUp(ctx context.Context, w session.Warmup) ([]time.Duration, error) {
	ids, _ := m.exampleIDs(2, 2)
	return ort.Repeat(ctx, func(ctx context.Context) error {
		_, err := m.Encode(ctx, ids, 2)
		return err
	}, w.MaxCalls, w.Steady)
}

// Close frees the model. It waits for calls in flight and is idempotent.
func (m *Model) Close() error { return m.s.Close() }
