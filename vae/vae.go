package vae

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/session"
)

// ErrInput reports inputs that do not fit the model.
var ErrInput = errors.New("vae: bad input")

// Factor is the spatial ratio between pixels and latents in Stable
// Diffusion's autoencoder.
const Factor = 8

func isFloat(d ort.DType) bool { return d == ort.Float32 || d == ort.Float16 }

// model is what both halves of the autoencoder share: the model file, its
// signature as read once, and after Open the session.
type model struct {
	path      string
	io        *onnxpb.IO
	ins, outs []ort.IOInfo
	batch     int64 // fixed batch, or -1
	s         *ort.Session
	loaded    session.Loaded
}

// Stats reports how many calls the session completed and the time spent
// inside ONNX Runtime. It is safe for concurrent use.
func (m *model) Stats() (calls int64, busy time.Duration) { return m.s.Stats() }

// Close frees the session. It waits for calls in flight and is idempotent.
func (m *model) Close() error { return m.s.Close() }

// read reads the model file at path: its signature, checked by check.
func read(path string, check func(bad func(string, ...any) error, ins, outs []ort.IOInfo) error) (*model, error) {
	io, ins, outs, err := ort.ReadModel("vae", path)
	if err != nil {
		return nil, err
	}
	bad := ort.Bad("vae", path)
	if len(ins) != 1 {
		return nil, bad("want one input, have %v", ins)
	}
	if err := check(bad, ins, outs); err != nil {
		return nil, err
	}
	return &model{path: path, io: io, ins: ins, outs: outs[:1], batch: ins[0].Shape[0]}, nil
}

// open loads m, with rewrites verified on the inputs of example, a batch
// of its rows.
func (m *model) open(ctx context.Context, o session.Options, example func(batch int) []int64) (*model, error) {
	inputs := func() ([]ort.Tensor, error) {
		batch := 2
		if m.batch > 0 {
			batch = int(m.batch)
		}
		shape := example(batch)
		r := rand.New(rand.NewPCG(3, 11))
		d := make([]float32, ort.Elems(shape))
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		return []ort.Tensor{{Shape: shape, Data: d}}, nil
	}
	s, loaded, err := rewrite.Open(ctx, rewrite.Source{Path: m.path, IO: m.io, Inputs: inputs}, m.outs, o)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	c := *m
	c.s, c.loaded = s, loaded
	return &c, nil
}

// run runs the one-input, one-output session over a batch, in chunks of
// the model's fixed batch when it has one.
func (m *model) run(ctx context.Context, in []float32, b, inN int, inDims []int64, out []float32, outN int, outDims []int64) error {
	step := b
	if m.batch > 0 {
		step = int(m.batch)
		if b%step != 0 {
			return fmt.Errorf("%w: batch %d is not a multiple of the model's fixed batch %d", ErrInput, b, step)
		}
	}
	for r := 0; r < b; r += step {
		i := []ort.Tensor{{Shape: append([]int64{int64(step)}, inDims...), Data: in[r*inN : (r+step)*inN]}}
		o := []ort.Tensor{{Shape: append([]int64{int64(step)}, outDims...), Data: out[r*outN : (r+step)*outN]}}
		if err := m.s.Run(ctx, i, o); err != nil {
			return fmt.Errorf("vae: %w", err)
		}
	}
	return nil
}

// decode runs a decoder of latentCh channels on latents [b, latentCh, h,
// w] and returns its pixels [b, 3, 8h, 8w].
func (m *model) decode(ctx context.Context, latents []float32, b, latentCh, h, w int) ([]float32, error) {
	oh, ow := h*Factor, w*Factor
	out := make([]float32, b*3*oh*ow)
	if err := m.run(ctx, latents, b, latentCh*h*w, []int64{int64(latentCh), int64(h), int64(w)},
		out, 3*oh*ow, []int64{3, int64(oh), int64(ow)}); err != nil {
		return nil, err
	}
	return out, nil
}

// encode runs an encoder of outCh output channels on pixels [b, 3, hp, wp]
// and returns its output [b, outCh, hp/8, wp/8].
func (m *model) encode(ctx context.Context, image []float32, b, hp, wp, outCh int) ([]float32, error) {
	h, w := hp/Factor, wp/Factor
	n := outCh * h * w
	out := make([]float32, b*n)
	if err := m.run(ctx, image, b, 3*hp*wp, []int64{3, int64(hp), int64(wp)},
		out, n, []int64{int64(outCh), int64(h), int64(w)}); err != nil {
		return nil, err
	}
	return out, nil
}

// checkLatents checks the shape of latents to decode by a decoder of
// latentCh channels.
func checkLatents(s tensor.Shape, latentCh int) error {
	if len(s) != 4 || s[0] <= 0 || s[1] != latentCh {
		return fmt.Errorf("%w: latents %v, want [batch, %d, h, w]", ErrInput, s, latentCh)
	}
	return nil
}

// checkImage checks the shape of an image to encode.
func checkImage(s tensor.Shape) error {
	if len(s) != 4 || s[0] <= 0 || s[1] != 3 || s[2]%Factor != 0 || s[3]%Factor != 0 || s[2] == 0 || s[3] == 0 {
		return fmt.Errorf("%w: image %v, want [batch, 3, H, W] with H and W multiples of %d", ErrInput, s, Factor)
	}
	return nil
}

// DecoderSignature is what a VAE decoder's model file declares, read and
// checked without loading its weights. It is a plain value, safe for
// concurrent reads.
type DecoderSignature struct {
	m        *model
	latentCh int
}

// ReadDecoderSignature reads the model file at path
// (vae_decoder/model.onnx) and checks that it is a VAE decoder: input
// `latent_sample` [batch, channels, h, w], first output `sample`
// [batch, 3, 8h, 8w]. A model with other inputs or outputs gives a
// *session.SignatureError.
func ReadDecoderSignature(path string) (*DecoderSignature, error) {
	d := &DecoderSignature{}
	m, err := read(path, func(bad func(string, ...any) error, ins, outs []ort.IOInfo) error {
		in := ins[0]
		if in.Name != "latent_sample" {
			return bad("want one input named latent_sample, have %v", ins)
		}
		if !isFloat(in.DType) || len(in.Shape) != 4 {
			return bad("latent_sample is %s%v, want float [batch, channels, height, width]", in.DType, in.Shape)
		}
		if len(outs) == 0 || outs[0].Name != "sample" || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
			return bad("first output is %v, want float sample [batch, 3, height, width]", outs)
		}
		d.latentCh = max(int(in.Shape[1]), 0)
		if d.latentCh == 0 {
			d.latentCh = 4
		}
		if oc := outs[0].Shape[1]; oc > 0 && oc != 3 {
			return bad("sample has %d channels, want 3", oc)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	d.m = m
	return d, nil
}

// Path returns the model file the signature was read from.
func (s *DecoderSignature) Path() string { return s.m.path }

// LatentChannels returns the number of latent channels the decoder takes.
func (s *DecoderSignature) LatentChannels() int { return s.latentCh }

// ExternalData lists the external data files the model reads its weights
// from.
func (s *DecoderSignature) ExternalData() []session.ExternalFile { return ort.ExternalData(s.m.io) }

// Open loads the decoder. The caller must Close the Decoder.
func (s *DecoderSignature) Open(ctx context.Context, o session.Options) (*Decoder, error) {
	m, err := s.m.open(ctx, o, func(batch int) []int64 { return []int64{int64(batch), int64(s.latentCh), 8, 8} })
	if err != nil {
		return nil, err
	}
	return &Decoder{DecoderSignature: s, Loaded: m.loaded, model: m}, nil
}

// OpenDecoder loads the decoder at path (vae_decoder/model.onnx): it reads
// and checks the signature (ReadDecoderSignature), then loads the weights.
// The caller must Close the Decoder.
func OpenDecoder(ctx context.Context, path string, o session.Options) (*Decoder, error) {
	return ort.OpenFile(ctx, path, o, ReadDecoderSignature)
}

// Decoder is a loaded VAE decoder. Decode is safe for concurrent use; the
// caller must Close it.
type Decoder struct {
	*DecoderSignature // what the model file declares
	session.Loaded    // how it was loaded
	*model            // its session: Stats, Close
}

// Decode turns [batch, channels, h, w] latents (already divided by the
// scaling factor) into [batch, 3, 8h, 8w] pixels in about [-1, 1], which the
// caller owns. A model whose batch is fixed is called once per item.
func (d *Decoder) Decode(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error) {
	s := latents.Shape()
	if err := checkLatents(s, d.latentCh); err != nil {
		return nil, err
	}
	b, h, w := s[0], s[2], s[3]
	out, err := d.decode(ctx, latents.Data().([]float32), b, h, w)
	if err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(b, 3, h*Factor, w*Factor), tensor.WithBacking(out)), nil
}

// decode runs the decoder on latents [b, channels, h, w].
func (d *Decoder) decode(ctx context.Context, latents []float32, b, h, w int) ([]float32, error) {
	return d.model.decode(ctx, latents, b, d.latentCh, h, w)
}

// WarmUp decodes one image's latents at the warm-up's image size until
// the call time is steady (see session.Warmup) and returns each call's
// duration.
func (d *Decoder) WarmUp(ctx context.Context, w session.Warmup) ([]time.Duration, error) {
	h, wd := w.Height/Factor, w.Width/Factor
	lat := tensor.New(tensor.WithShape(1, d.latentCh, h, wd), tensor.WithBacking(make([]float32, d.latentCh*h*wd)))
	return ort.Repeat(ctx, func(ctx context.Context) error {
		_, err := d.Decode(ctx, lat)
		return err
	}, w.MaxCalls, w.Steady)
}

// EncoderSignature is what a VAE encoder's model file declares, read and
// checked without loading its weights. It is a plain value, safe for
// concurrent reads.
type EncoderSignature struct {
	m        *model
	outCh    int  // channels of the output
	params   bool // output is mean ‖ logvar (latent_parameters)
	latentCh int
}

// ReadEncoderSignature reads the model file at path
// (vae_encoder/model.onnx) and checks that it is a VAE encoder: input
// `sample` [batch, 3, H, W], output `latent_sample` [batch, c, H/8, W/8]
// or `latent_parameters` [batch, 2c, H/8, W/8] (mean ‖ logvar, as optimum
// exports it). A model with other inputs or outputs gives a
// *session.SignatureError.
func ReadEncoderSignature(path string) (*EncoderSignature, error) {
	e := &EncoderSignature{}
	m, err := read(path, func(bad func(string, ...any) error, ins, outs []ort.IOInfo) error {
		if ins[0].Name != "sample" {
			return bad("want one input named sample, have %v", ins)
		}
		if !isFloat(ins[0].DType) || len(ins[0].Shape) != 4 {
			return bad("sample is %s%v, want float [batch, 3, height, width]", ins[0].DType, ins[0].Shape)
		}
		if len(outs) == 0 || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
			return bad("first output is %v, want float [batch, channels, h/8, w/8]", outs)
		}
		switch outs[0].Name {
		case "latent_sample":
		case "latent_parameters":
			e.params = true
		default:
			return bad("first output is %q, want latent_sample or latent_parameters", outs[0].Name)
		}
		e.outCh = int(outs[0].Shape[1])
		if e.outCh <= 0 {
			if outs[0].DType == ort.Float16 {
				return bad("float16 output needs a fixed channel count, have %v", outs[0].Shape)
			}
			e.outCh = 4
			if e.params {
				e.outCh = 8
			}
		}
		e.latentCh = e.outCh
		if e.params {
			if e.outCh%2 != 0 {
				return bad("latent_parameters has %d channels, want an even number (mean ‖ logvar)", e.outCh)
			}
			e.latentCh = e.outCh / 2
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.m = m
	return e, nil
}

// Path returns the model file the signature was read from.
func (s *EncoderSignature) Path() string { return s.m.path }

// LatentChannels returns the number of latent channels Encode returns.
func (s *EncoderSignature) LatentChannels() int { return s.latentCh }

// Output returns the name of the model's output: "latent_sample", or
// "latent_parameters" for a model that gives the distribution's mean and
// log-variance (Encode returns the mean).
func (s *EncoderSignature) Output() string {
	if s.params {
		return "latent_parameters"
	}
	return "latent_sample"
}

// ExternalData lists the external data files the model reads its weights
// from.
func (s *EncoderSignature) ExternalData() []session.ExternalFile { return ort.ExternalData(s.m.io) }

// Open loads the encoder. The caller must Close the Encoder.
func (s *EncoderSignature) Open(ctx context.Context, o session.Options) (*Encoder, error) {
	m, err := s.m.open(ctx, o, func(batch int) []int64 { return []int64{int64(batch), 3, 8 * Factor, 8 * Factor} })
	if err != nil {
		return nil, err
	}
	return &Encoder{EncoderSignature: s, Loaded: m.loaded, model: m}, nil
}

// OpenEncoder loads the encoder at path (vae_encoder/model.onnx): it reads
// and checks the signature (ReadEncoderSignature), then loads the weights.
// The caller must Close the Encoder.
func OpenEncoder(ctx context.Context, path string, o session.Options) (*Encoder, error) {
	return ort.OpenFile(ctx, path, o, ReadEncoderSignature)
}

// Encoder is a loaded VAE encoder. Encode is safe for concurrent use; the
// caller must Close it.
type Encoder struct {
	*EncoderSignature // what the model file declares
	session.Loaded    // how it was loaded
	*model            // its session: Stats, Close
}

// Encode turns [batch, 3, H, W] pixels in [-1, 1] (H and W multiples of 8)
// into [batch, c, H/8, W/8] latents, not yet multiplied by the scaling
// factor. For a latent_parameters model it returns the distribution's mean;
// a legacy export that samples inside the graph returns its sample.
func (e *Encoder) Encode(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error) {
	s := image.Shape()
	if err := checkImage(s); err != nil {
		return nil, err
	}
	b, h, w := s[0], s[2]/Factor, s[3]/Factor
	out, err := e.encode(ctx, image.Data().([]float32), b, s[2], s[3])
	if err != nil {
		return nil, err
	}
	return e.latents(out, b, h, w), nil
}

// encode runs the encoder on pixels [b, 3, hp, wp] and returns its output
// [b, outCh, hp/8, wp/8].
func (e *Encoder) encode(ctx context.Context, image []float32, b, hp, wp int) ([]float32, error) {
	return e.model.encode(ctx, image, b, hp, wp, e.outCh)
}

// latents returns the latents of the encoder's output out [b, outCh, h, w]:
// the mean of a latent_parameters model's distribution.
func (e *Encoder) latents(out []float32, b, h, w int) *tensor.Dense {
	if !e.params {
		return tensor.New(tensor.WithShape(b, e.outCh, h, w), tensor.WithBacking(out))
	}
	n, m := e.outCh*h*w, e.latentCh*h*w
	mean := make([]float32, b*m)
	for i := range b {
		copy(mean[i*m:(i+1)*m], out[i*n:i*n+m])
	}
	return tensor.New(tensor.WithShape(b, e.latentCh, h, w), tensor.WithBacking(mean))
}
