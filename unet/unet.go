package unet

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// Signature is what a UNet's model file declares, read and checked without
// loading its weights. It is a plain value, safe for concurrent reads.
type Signature struct {
	path                       string
	io                         *onnxpb.IO
	ins, outs                  []ort.IOInfo
	sample, timestep, context_ int // input positions
	textEmbeds, timeIDs        int // SDXL's added conditioning inputs, or -1
	timestepCond, condDim      int // LCM's timestep_cond input (or -1) and its width
	pooledDim, timeIDsDim      int // their widths
	tsType                     ort.DType
	tsShape                    []int64 // nil (scalar), [1] or [batch]
	inChannels, outChannels    int
	fixedChannels              bool  // the sample's channel dim is fixed in the file
	crossDim                   int   // encoder hidden size, 0 if dynamic
	seq                        int   // fixed sequence length of encoder_hidden_states, 0 if dynamic
	batch                      int64 // fixed batch or -1
}

// ReadSignature reads the model file at path (unet/model.onnx) and checks
// that it is a Stable Diffusion UNet: `sample` [batch, 4 or 9, h, w],
// `timestep` (float32, float16 or int64; shape [], [1] or [batch]),
// `encoder_hidden_states` [batch, sequence, hidden], and a first output of
// shape [batch, 4, h, w]. A model with other inputs or outputs gives a
// *session.SignatureError.
func ReadSignature(path string) (*Signature, error) {
	io, ins, outs, err := ort.ReadModel("unet", path)
	if err != nil {
		return nil, err
	}
	m, err := check(path, ins, outs)
	if err != nil {
		return nil, err
	}
	m.io, m.ins, m.outs = io, ins, outs[:1]
	if !m.fixedChannels {
		// diffusers' legacy export leaves the channel dim symbolic: the
		// first convolution's weight [out, in, kh, kw] says it
		if n := convInChannels(io); n > 0 {
			if n != 4 && n != 9 {
				return nil, ort.Bad("unet", path)("conv_in.weight takes %d channels, want 4 (or 9 for inpainting)", n)
			}
			m.inChannels = n
		}
	}
	return m, nil
}

// convInChannels returns the input channels of the initializer
// conv_in.weight, or 0 when the file has none of rank 4.
func convInChannels(io *onnxpb.IO) int {
	for _, t := range io.Initializers {
		if t.Name == "conv_in.weight" && len(t.Dims) == 4 && t.Dims[1] > 0 {
			return int(t.Dims[1])
		}
	}
	return 0
}

func isFloat(d ort.DType) bool { return d == ort.Float32 || d == ort.Float16 }

func check(path string, ins, outs []ort.IOInfo) (*Signature, error) {
	bad := ort.Bad("unet", path)
	m := &Signature{path: path, sample: -1, timestep: -1, context_: -1, textEmbeds: -1, timeIDs: -1, timestepCond: -1}
	for i, v := range ins {
		switch v.Name {
		case "sample":
			m.sample = i
		case "timestep":
			m.timestep = i
		case "encoder_hidden_states":
			m.context_ = i
		case "text_embeds":
			m.textEmbeds = i
		case "time_ids":
			m.timeIDs = i
		case "timestep_cond":
			m.timestepCond = i
		default:
			return nil, bad("unexpected input %q (want sample, timestep, encoder_hidden_states, and for SDXL text_embeds, time_ids, for LCM timestep_cond)", v.Name)
		}
	}
	if err := m.checkAdded(ins, bad); err != nil {
		return nil, err
	}
	if err := m.checkTimestepCond(ins, bad); err != nil {
		return nil, err
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
	m.fixedChannels = m.inChannels > 0
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
	if c.Shape[1] > 0 {
		m.seq = int(c.Shape[1])
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

// Path returns the model file the signature was read from.
func (m *Signature) Path() string { return m.path }

// InChannels returns the sample's channel count: 4, or 9 for inpainting.
func (m *Signature) InChannels() int { return m.inChannels }

// OutChannels returns the prediction's channel count (the latent channels).
func (m *Signature) OutChannels() int { return m.outChannels }

// CrossDim returns the width of encoder_hidden_states, or 0 when the model
// leaves it dynamic.
func (m *Signature) CrossDim() int { return m.crossDim }

// SequenceLength returns the number of tokens encoder_hidden_states must
// have, or 0 when any number works.
func (m *Signature) SequenceLength() int { return m.seq }

// FixedBatch returns the batch size the model requires, or 0 when any works.
func (m *Signature) FixedBatch() int { return max(int(m.batch), 0) }

// TimestepType returns the timestep input's element type.
func (m *Signature) TimestepType() session.DType { return m.tsType }

// PerItemTimesteps reports whether one call can take a different timestep
// for each batch item (the timestep input has shape [batch]).
func (m *Signature) PerItemTimesteps() bool {
	return len(m.tsShape) == 1 && m.tsShape[0] != 1
}

// ExternalData lists the external data files the model reads its weights
// from.
func (m *Signature) ExternalData() []session.ExternalFile { return ort.ExternalData(m.io) }

// example returns the inputs of a call at latent size h×w for batch rows:
// samples, timestep 501 (mid-schedule) and text embeddings of the model's
// sequence length and width (77 tokens of 768, SD 1.x's, where it leaves
// them dynamic), random normal values, or zeros when random is false.
func (m *Signature) example(batch, h, w int, random bool) (sample *tensor.Dense, ts []float64, context_ *tensor.Dense) {
	seq, cross := m.seq, m.crossDim
	if seq == 0 {
		seq = 77
	}
	if cross == 0 {
		cross = 768
	}
	r := rand.New(rand.NewPCG(2, 11))
	fill := func(n int) []float32 {
		d := make([]float32, n)
		for i := range d {
			if random {
				d[i] = float32(r.NormFloat64())
			}
		}
		return d
	}
	sample = tensor.New(tensor.WithShape(batch, m.inChannels, h, w), tensor.WithBacking(fill(batch*m.inChannels*h*w)))
	context_ = tensor.New(tensor.WithShape(batch, seq, cross), tensor.WithBacking(fill(batch*seq*cross)))
	return sample, []float64{501}, context_
}

// exampleInputs are the inputs a rewrite of the model is verified on: a
// guided step's two rows (or the fixed batch) at 8×8 latents.
func (m *Signature) exampleInputs() ([]ort.Tensor, error) {
	batch := 2
	if m.batch > 0 {
		batch = int(m.batch)
	}
	x, ts, c := m.example(batch, 8, 8, true)
	return m.inputs(x, ts, c, m.exampleAdded(batch, 8, 8, true, 8.5), 0, batch)
}

// Open loads the UNet. The caller must Close the Model.
func (m *Signature) Open(ctx context.Context, o session.Options) (*Model, error) {
	sess, loaded, err := rewrite.Open(ctx, rewrite.Source{Path: m.path, IO: m.io, Inputs: m.exampleInputs}, m.outs, o)
	if err != nil {
		return nil, fmt.Errorf("unet: %w", err)
	}
	return &Model{Signature: m, s: sess, Loaded: loaded}, nil
}

// Open loads the UNet at path (unet/model.onnx; external weights beside it
// are found): it reads and checks the signature (ReadSignature), then
// loads the weights. The caller must Close the Model.
func Open(ctx context.Context, path string, o session.Options) (*Model, error) {
	return ort.OpenFile(ctx, path, o, ReadSignature)
}

// Model is a loaded UNet. Predict is safe for concurrent use; the caller
// must Close the model.
type Model struct {
	*Signature     // what the model file declares
	session.Loaded // how it was loaded
	s              *ort.Session
	cache          *stepCache            // the shallow model of step caching, or nil (stepcache.go)
	rec            atomic.Pointer[Calls] // Record's, or nil (int8.go)
}

// Stats reports how many calls the session completed and the time spent
// inside ONNX Runtime. It is safe for concurrent use.
func (m *Model) Stats() (calls int64, busy time.Duration) { return m.s.Stats() }

// WarmUp calls the UNet on a guided step at the warm-up's image size until
// its call time is steady (see session.Warmup) and returns each call's
// duration; a step-cached model warms its shallow model up the same way
// after the full one.
func (m *Model) WarmUp(ctx context.Context, w session.Warmup) ([]time.Duration, error) {
	x, ts, c := m.example(2, w.Height/8, w.Width/8, false)
	add := m.exampleAdded(2, w.Height/8, w.Width/8, false, 8.5)
	times, err := ort.Repeat(ctx, func(ctx context.Context) error {
		_, err := m.predict(ctx, x, ts, c, add)
		return err
	}, w.MaxCalls, w.Steady)
	if err != nil || m.cache == nil {
		return times, err
	}
	more, err := m.warmShallow(ctx, w, x, ts, c, add) // stepcache.go
	return append(times, more...), err
}

// ErrInput reports inputs that do not fit the model.
var ErrInput = errors.New("unet: bad input")

// Predict runs one UNet call. sample is [batch, channels, h, w]; ts holds
// one timestep for the whole batch or one per batch item; ctx is
// [batch, sequence, hidden]. It returns the [batch, 4, h, w] prediction,
// which the caller owns. A model whose batch is fixed at 1 is called once
// per item.
func (m *Model) Predict(ctx context.Context, sample *tensor.Dense, ts []float64, context_ *tensor.Dense) (*tensor.Dense, error) {
	return m.predict(ctx, sample, ts, context_, nil)
}

func (m *Model) predict(ctx context.Context, sample *tensor.Dense, ts []float64, context_ *tensor.Dense, add *Added) (*tensor.Dense, error) {
	pred, _, err := m.run(ctx, sample, ts, context_, add, nil)
	return pred, err
}

// run runs one UNet call: the model's session, or with features the step
// cache's shallow model on them. A step-cached model's full calls also
// return the deep features of every row.
func (m *Model) run(ctx context.Context, sample *tensor.Dense, ts []float64, context_ *tensor.Dense, add *Added, features *tensor.Dense) (pred, deep *tensor.Dense, err error) {
	ss, cs := sample.Shape(), context_.Shape()
	if len(ss) != 4 || len(cs) != 3 || ss[0] != cs[0] || ss[0] <= 0 {
		return nil, nil, fmt.Errorf("%w: sample %v and encoder_hidden_states %v", ErrInput, ss, cs)
	}
	b, ch, h, w := ss[0], ss[1], ss[2], ss[3]
	if ch != m.inChannels {
		return nil, nil, fmt.Errorf("%w: sample has %d channels, model wants %d", ErrInput, ch, m.inChannels)
	}
	if m.crossDim > 0 && cs[2] != m.crossDim {
		return nil, nil, fmt.Errorf("%w: encoder_hidden_states width %d, model wants %d", ErrInput, cs[2], m.crossDim)
	}
	if len(ts) != 1 && len(ts) != b {
		return nil, nil, fmt.Errorf("%w: %d timesteps for batch %d", ErrInput, len(ts), b)
	}
	for _, t := range ts {
		if math.IsNaN(t) || math.IsInf(t, 0) {
			return nil, nil, fmt.Errorf("%w: timestep %v", ErrInput, t)
		}
	}
	step := b
	if m.batch > 0 {
		step = int(m.batch)
		if b%step != 0 {
			return nil, nil, fmt.Errorf("%w: batch %d is not a multiple of the model's fixed batch %d", ErrInput, b, step)
		}
	}
	sess := m.s
	if features != nil {
		sess = m.cache.shallow
	}
	out := make([]float32, b*m.outChannels*h*w)
	on := m.outChannels * h * w
	var fd []float32
	var fs []int64
	for r := 0; r < b; r += step {
		in, err := m.inputs(sample, ts, context_, add, r, step)
		if err != nil {
			return nil, nil, err
		}
		if c := m.rec.Load(); c != nil {
			c.add(in)
		}
		o := []ort.Tensor{{Shape: []int64{int64(step), int64(m.outChannels), int64(h), int64(w)}, Data: out[r*on : (r+step)*on]}}
		if features != nil {
			f, err := m.cache.featureRows(features, b, r, step)
			if err != nil {
				return nil, nil, err
			}
			in = append(in, f)
		} else if m.cache != nil {
			o = append(o, ort.Tensor{}) // the deep features, allocated by ORT
		}
		if err := sess.Run(ctx, in, o); err != nil {
			return nil, nil, fmt.Errorf("unet: %w", err)
		}
		if len(o) > 1 {
			if fd, fs, err = gather(fd, fs, o[1], step); err != nil {
				return nil, nil, err
			}
		}
	}
	pred = tensor.New(tensor.WithShape(b, m.outChannels, h, w), tensor.WithBacking(out))
	if fs != nil {
		deep = tensor.New(tensor.WithShape(int(fs[0]), int(fs[1]), int(fs[2]), int(fs[3])), tensor.WithBacking(fd))
	}
	return pred, deep, nil
}

// inputs builds the session's inputs for rows [r, r+n) of a call.
func (m *Signature) inputs(sample *tensor.Dense, ts []float64, context_ *tensor.Dense, add *Added, r, n int) ([]ort.Tensor, error) {
	ss, cs := sample.Shape(), context_.Shape()
	tsIn, err := m.timesteps(ts, r, n)
	if err != nil {
		return nil, err
	}
	sn, cn := ss[1]*ss[2]*ss[3], cs[1]*cs[2]
	sd, cd := sample.Data().([]float32), context_.Data().([]float32)
	in := make([]ort.Tensor, len(m.ins))
	in[m.sample] = ort.Tensor{Shape: []int64{int64(n), int64(ss[1]), int64(ss[2]), int64(ss[3])}, Data: sd[r*sn : (r+n)*sn]}
	in[m.timestep] = tsIn
	in[m.context_] = ort.Tensor{Shape: []int64{int64(n), int64(cs[1]), int64(cs[2])}, Data: cd[r*cn : (r+n)*cn]}
	if m.timestepCond >= 0 {
		if add == nil || add.TimestepCond == nil {
			return nil, fmt.Errorf("%w: the model takes timestep_cond (LCM): call PredictCond", ErrInput)
		}
		cd, w := add.TimestepCond.Data().([]float32), m.condDim
		in[m.timestepCond] = ort.Tensor{Shape: []int64{int64(n), int64(w)}, Data: cd[r*w : (r+n)*w]}
	}
	if m.textEmbeds >= 0 {
		if add == nil || add.TextEmbeds == nil {
			return nil, fmt.Errorf("%w: the model takes text_embeds and time_ids (SDXL): call PredictAdded", ErrInput)
		}
		pd, td := add.TextEmbeds.Data().([]float32), add.TimeIDs.Data().([]float32)
		pw, tw := m.pooledDim, m.timeIDsDim
		in[m.textEmbeds] = ort.Tensor{Shape: []int64{int64(n), int64(pw)}, Data: pd[r*pw : (r+n)*pw]}
		in[m.timeIDs] = ort.Tensor{Shape: []int64{int64(n), int64(tw)}, Data: td[r*tw : (r+n)*tw]}
	}
	return in, nil
}

// timesteps builds the timestep input for rows [r, r+n) of the batch.
func (m *Signature) timesteps(ts []float64, r, n int) (ort.Tensor, error) {
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
func (m *Model) Close() error { return errors.Join(m.s.Close(), m.cache.close()) }
