package unet

import (
	"context"
	"errors"
	"fmt"
	"math"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// Model is a loaded UNet. Predict is safe for concurrent use; the caller
// must Close the model.
type Model struct {
	s                          *ort.Session
	sample, timestep, context_ int // input positions
	tsType                     ort.DType
	tsShape                    []int64 // nil (scalar), [1] or [batch]
	inChannels, outChannels    int
	crossDim                   int   // encoder hidden size, 0 if dynamic
	batch                      int64 // fixed batch or -1
}

// SignatureError reports a model whose inputs or outputs are not those of a
// Stable Diffusion UNet.
type SignatureError struct {
	Path   string
	Reason string
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("unet: %s: %s", e.Path, e.Reason)
}

// Open loads the UNet at path (unet/model.onnx; external weights beside it
// are found). It checks the signature: `sample` [batch, 4 or 9, h, w],
// `timestep` (float32, float16 or int64; shape [], [1] or [batch]),
// `encoder_hidden_states` [batch, sequence, hidden], and a first output of
// shape [batch, 4, h, w].
func Open(ctx context.Context, path string, o ort.Options) (*Model, error) {
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	m, err := check(path, ins, outs)
	if err != nil {
		return nil, err
	}
	m.s, err = ort.Open(ctx, path, ins, outs[:1], o)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	return m, nil
}

func isFloat(d ort.DType) bool { return d == ort.Float32 || d == ort.Float16 }

func check(path string, ins, outs []ort.IOInfo) (*Model, error) {
	bad := func(format string, args ...any) error {
		return &SignatureError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	m := &Model{sample: -1, timestep: -1, context_: -1}
	for i, v := range ins {
		switch v.Name {
		case "sample":
			m.sample = i
		case "timestep":
			m.timestep = i
		case "encoder_hidden_states":
			m.context_ = i
		default:
			return nil, bad("unexpected input %q (want sample, timestep, encoder_hidden_states)", v.Name)
		}
	}
	if m.sample < 0 || m.timestep < 0 || m.context_ < 0 {
		return nil, bad("missing inputs: have %v, want sample, timestep and encoder_hidden_states", ins)
	}
	s, t, c := ins[m.sample], ins[m.timestep], ins[m.context_]
	if !isFloat(s.DType) || len(s.Shape) != 4 {
		return nil, bad("sample is %s%v, want float [batch, channels, height, width]", s.DType, s.Shape)
	}
	m.inChannels = int(s.Shape[1])
	if m.inChannels != 4 && m.inChannels != 9 && m.inChannels > 0 {
		return nil, bad("sample has %d channels, want 4 (or 9 for inpainting)", m.inChannels)
	}
	if m.inChannels <= 0 {
		m.inChannels = 4
	}
	m.batch = s.Shape[0]
	if !isFloat(t.DType) && t.DType != ort.Int64 {
		return nil, bad("timestep is %s, want float32, float16 or int64", t.DType)
	}
	if len(t.Shape) > 1 {
		return nil, bad("timestep has shape %v, want [], [1] or [batch]", t.Shape)
	}
	m.tsType, m.tsShape = t.DType, t.Shape
	if !isFloat(c.DType) || len(c.Shape) != 3 {
		return nil, bad("encoder_hidden_states is %s%v, want float [batch, sequence, hidden]", c.DType, c.Shape)
	}
	if c.Shape[2] > 0 {
		m.crossDim = int(c.Shape[2])
	}
	if len(outs) == 0 || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
		return nil, bad("first output is %v, want float [batch, 4, height, width]", outs)
	}
	m.outChannels = 4
	if oc := outs[0].Shape[1]; oc > 0 {
		m.outChannels = int(oc)
	}
	return m, nil
}

// InChannels returns the sample's channel count: 4, or 9 for inpainting.
func (m *Model) InChannels() int { return m.inChannels }

// OutChannels returns the prediction's channel count (the latent channels).
func (m *Model) OutChannels() int { return m.outChannels }

// CrossDim returns the width of encoder_hidden_states, or 0 when the model
// leaves it dynamic.
func (m *Model) CrossDim() int { return m.crossDim }

// FixedBatch returns the batch size the model requires, or 0 when any works.
func (m *Model) FixedBatch() int {
	if m.batch > 0 {
		return int(m.batch)
	}
	return 0
}

// TimestepType returns the timestep input's element type.
func (m *Model) TimestepType() ort.DType { return m.tsType }

// PerItemTimesteps reports whether one call can take a different timestep
// for each batch item (the timestep input has shape [batch]).
func (m *Model) PerItemTimesteps() bool {
	return len(m.tsShape) == 1 && m.tsShape[0] != 1
}

// Session returns the underlying session, for statistics.
func (m *Model) Session() *ort.Session { return m.s }

// ErrInput reports inputs that do not fit the model.
var ErrInput = errors.New("unet: bad input")

// Predict runs one UNet call. sample is [batch, channels, h, w]; ts holds
// one timestep for the whole batch or one per batch item; ctx is
// [batch, sequence, hidden]. It returns the [batch, 4, h, w] prediction,
// which the caller owns. A model whose batch is fixed at 1 is called once
// per item.
func (m *Model) Predict(ctx context.Context, sample *tensor.Dense, ts []float64, context_ *tensor.Dense) (*tensor.Dense, error) {
	ss, cs := sample.Shape(), context_.Shape()
	if len(ss) != 4 || len(cs) != 3 || ss[0] != cs[0] || ss[0] <= 0 {
		return nil, fmt.Errorf("%w: sample %v and encoder_hidden_states %v", ErrInput, ss, cs)
	}
	b, ch, h, w := ss[0], ss[1], ss[2], ss[3]
	if ch != m.inChannels {
		return nil, fmt.Errorf("%w: sample has %d channels, model wants %d", ErrInput, ch, m.inChannels)
	}
	if m.crossDim > 0 && cs[2] != m.crossDim {
		return nil, fmt.Errorf("%w: encoder_hidden_states width %d, model wants %d", ErrInput, cs[2], m.crossDim)
	}
	if len(ts) != 1 && len(ts) != b {
		return nil, fmt.Errorf("%w: %d timesteps for batch %d", ErrInput, len(ts), b)
	}
	for _, t := range ts {
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, fmt.Errorf("%w: timestep %v", ErrInput, t)
		}
	}
	sd, cd := sample.Data().([]float32), context_.Data().([]float32)
	step := b
	if m.batch > 0 {
		step = int(m.batch)
		if b%step != 0 {
			return nil, fmt.Errorf("%w: batch %d is not a multiple of the model's fixed batch %d", ErrInput, b, step)
		}
	}
	out := make([]float32, b*m.outChannels*h*w)
	sn, cn, on := ch*h*w, cs[1]*cs[2], m.outChannels*h*w
	for r := 0; r < b; r += step {
		tsIn, err := m.timesteps(ts, r, step)
		if err != nil {
			return nil, err
		}
		in := make([]ort.Tensor, 3)
		in[m.sample] = ort.Tensor{Shape: []int64{int64(step), int64(ch), int64(h), int64(w)}, Data: sd[r*sn : (r+step)*sn]}
		in[m.timestep] = tsIn
		in[m.context_] = ort.Tensor{Shape: []int64{int64(step), int64(cs[1]), int64(cs[2])}, Data: cd[r*cn : (r+step)*cn]}
		o := []ort.Tensor{{Shape: []int64{int64(step), int64(m.outChannels), int64(h), int64(w)}, Data: out[r*on : (r+step)*on]}}
		if err := m.s.Run(ctx, in, o); err != nil {
			return nil, fmt.Errorf("unet: %w", err)
		}
	}
	return tensor.New(tensor.WithShape(b, m.outChannels, h, w), tensor.WithBacking(out)), nil
}

// timesteps builds the timestep input for rows [r, r+n) of the batch.
func (m *Model) timesteps(ts []float64, r, n int) (ort.Tensor, error) {
	vals := ts
	if len(ts) > 1 {
		vals = ts[r : r+n]
	}
	uniform := true
	for _, v := range vals {
		uniform = uniform && v == vals[0]
	}
	var count int
	var shape []int64
	switch {
	case len(m.tsShape) == 0: // scalar
		if !uniform {
			return ort.Tensor{}, fmt.Errorf("%w: the model takes one timestep per call, batch has %v", ErrInput, vals)
		}
		count = 1
	case m.tsShape[0] == 1:
		if !uniform {
			return ort.Tensor{}, fmt.Errorf("%w: the model takes one timestep per call, batch has %v", ErrInput, vals)
		}
		count, shape = 1, []int64{1}
	default:
		count, shape = n, []int64{int64(n)}
	}
	at := func(i int) float64 {
		if len(vals) == 1 {
			return vals[0]
		}
		return vals[i]
	}
	if m.tsType == ort.Int64 {
		d := make([]int64, count)
		for i := range d {
			d[i] = int64(at(i)) // truncates like numpy's astype(int64)
		}
		return ort.Tensor{Shape: shape, Data: d}, nil
	}
	d := make([]float32, count)
	for i := range d {
		d[i] = float32(at(i))
	}
	return ort.Tensor{Shape: shape, Data: d}, nil
}

// Close frees the model. It waits for calls in flight and is idempotent.
func (m *Model) Close() error { return m.s.Close() }
