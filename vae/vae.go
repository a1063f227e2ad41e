package vae

import (
	"context"
	"errors"
	"fmt"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// SignatureError reports a model whose inputs or outputs are not those of a
// VAE decoder or encoder.
type SignatureError struct {
	Path   string
	Reason string
}

func (e *SignatureError) Error() string {
	return fmt.Sprintf("vae: %s: %s", e.Path, e.Reason)
}

// ErrInput reports inputs that do not fit the model.
var ErrInput = errors.New("vae: bad input")

// Factor is the spatial ratio between pixels and latents in Stable
// Diffusion's autoencoder.
const Factor = 8

func isFloat(d ort.DType) bool { return d == ort.Float32 || d == ort.Float16 }

// Decoder is a loaded VAE decoder. Decode is safe for concurrent use; the
// caller must Close it.
type Decoder struct {
	s        *ort.Session
	latentCh int
	outCh    int
	batch    int64
}

// OpenDecoder loads the decoder at path (vae_decoder/model.onnx): input
// `latent_sample` [batch, channels, h, w], first output `sample`
// [batch, 3, 8h, 8w].
func OpenDecoder(ctx context.Context, path string, o ort.Options) (*Decoder, error) {
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	bad := func(format string, args ...any) error {
		return &SignatureError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	if len(ins) != 1 || ins[0].Name != "latent_sample" {
		return nil, bad("want one input named latent_sample, have %v", ins)
	}
	in := ins[0]
	if !isFloat(in.DType) || len(in.Shape) != 4 {
		return nil, bad("latent_sample is %s%v, want float [batch, channels, height, width]", in.DType, in.Shape)
	}
	if len(outs) == 0 || outs[0].Name != "sample" || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
		return nil, bad("first output is %v, want float sample [batch, 3, height, width]", outs)
	}
	d := &Decoder{latentCh: int(in.Shape[1]), outCh: int(outs[0].Shape[1]), batch: in.Shape[0]}
	if d.latentCh <= 0 {
		d.latentCh = 4
	}
	if d.outCh <= 0 {
		d.outCh = 3
	}
	if d.outCh != 3 {
		return nil, bad("sample has %d channels, want 3", d.outCh)
	}
	d.s, err = ort.Open(ctx, path, ins, outs[:1], o)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	return d, nil
}

// LatentChannels returns the number of latent channels the decoder takes.
func (d *Decoder) LatentChannels() int { return d.latentCh }

// Session returns the underlying session, for statistics.
func (d *Decoder) Session() *ort.Session { return d.s }

// Decode turns [batch, channels, h, w] latents (already divided by the
// scaling factor) into [batch, 3, 8h, 8w] pixels in about [-1, 1], which the
// caller owns. A model whose batch is fixed is called once per item.
func (d *Decoder) Decode(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error) {
	s := latents.Shape()
	if len(s) != 4 || s[0] <= 0 || s[1] != d.latentCh {
		return nil, fmt.Errorf("%w: latents %v, want [batch, %d, h, w]", ErrInput, s, d.latentCh)
	}
	b, h, w := s[0], s[2], s[3]
	oh, ow := h*Factor, w*Factor
	out := make([]float32, b*3*oh*ow)
	if err := runBatched(ctx, d.s, d.batch, latents.Data().([]float32), b, s[1]*h*w, []int64{int64(s[1]), int64(h), int64(w)},
		out, 3*oh*ow, []int64{3, int64(oh), int64(ow)}); err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(b, 3, oh, ow), tensor.WithBacking(out)), nil
}

// runBatched runs a one-input, one-output session over a batch, in chunks
// of the model's fixed batch when it has one.
func runBatched(ctx context.Context, s *ort.Session, fixed int64, in []float32, b, inN int, inDims []int64, out []float32, outN int, outDims []int64) error {
	step := b
	if fixed > 0 {
		step = int(fixed)
		if b%step != 0 {
			return fmt.Errorf("%w: batch %d is not a multiple of the model's fixed batch %d", ErrInput, b, step)
		}
	}
	for r := 0; r < b; r += step {
		i := []ort.Tensor{{Shape: append([]int64{int64(step)}, inDims...), Data: in[r*inN : (r+step)*inN]}}
		o := []ort.Tensor{{Shape: append([]int64{int64(step)}, outDims...), Data: out[r*outN : (r+step)*outN]}}
		if err := s.Run(ctx, i, o); err != nil {
			return fmt.Errorf("vae: %w", err)
		}
	}
	return nil
}

// Close frees the decoder. It waits for calls in flight and is idempotent.
func (d *Decoder) Close() error { return d.s.Close() }

// Encoder is a loaded VAE encoder. Encode is safe for concurrent use; the
// caller must Close it.
type Encoder struct {
	s        *ort.Session
	outCh    int  // channels of the output
	params   bool // output is mean ‖ logvar (latent_parameters)
	latentCh int
	batch    int64
}

// OpenEncoder loads the encoder at path (vae_encoder/model.onnx): input
// `sample` [batch, 3, H, W], output `latent_sample` [batch, c, H/8, W/8] or
// `latent_parameters` [batch, 2c, H/8, W/8] (mean ‖ logvar, as optimum
// exports it).
func OpenEncoder(ctx context.Context, path string, o ort.Options) (*Encoder, error) {
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	bad := func(format string, args ...any) error {
		return &SignatureError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	if len(ins) != 1 || ins[0].Name != "sample" {
		return nil, bad("want one input named sample, have %v", ins)
	}
	if !isFloat(ins[0].DType) || len(ins[0].Shape) != 4 {
		return nil, bad("sample is %s%v, want float [batch, 3, height, width]", ins[0].DType, ins[0].Shape)
	}
	if len(outs) == 0 || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
		return nil, bad("first output is %v, want float [batch, channels, h/8, w/8]", outs)
	}
	e := &Encoder{batch: ins[0].Shape[0]}
	switch outs[0].Name {
	case "latent_sample":
	case "latent_parameters":
		e.params = true
	default:
		return nil, bad("first output is %q, want latent_sample or latent_parameters", outs[0].Name)
	}
	e.outCh = int(outs[0].Shape[1])
	if e.outCh <= 0 {
		if outs[0].DType == ort.Float16 {
			return nil, bad("float16 output needs a fixed channel count, have %v", outs[0].Shape)
		}
		e.outCh = 4
		if e.params {
			e.outCh = 8
		}
	}
	e.latentCh = e.outCh
	if e.params {
		if e.outCh%2 != 0 {
			return nil, bad("latent_parameters has %d channels, want an even number (mean ‖ logvar)", e.outCh)
		}
		e.latentCh = e.outCh / 2
	}
	e.s, err = ort.Open(ctx, path, ins, outs[:1], o)
	if err != nil {
		return nil, fmt.Errorf("vae: %w", err)
	}
	return e, nil
}

// LatentChannels returns the number of latent channels Encode returns.
func (e *Encoder) LatentChannels() int { return e.latentCh }

// Session returns the underlying session, for statistics.
func (e *Encoder) Session() *ort.Session { return e.s }

// Encode turns [batch, 3, H, W] pixels in [-1, 1] (H and W multiples of 8)
// into [batch, c, H/8, W/8] latents, not yet multiplied by the scaling
// factor. For a latent_parameters model it returns the distribution's mean;
// a legacy export that samples inside the graph returns its sample.
func (e *Encoder) Encode(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error) {
	s := image.Shape()
	if len(s) != 4 || s[0] <= 0 || s[1] != 3 || s[2]%Factor != 0 || s[3]%Factor != 0 || s[2] == 0 || s[3] == 0 {
		return nil, fmt.Errorf("%w: image %v, want [batch, 3, H, W] with H and W multiples of %d", ErrInput, s, Factor)
	}
	b, h, w := s[0], s[2]/Factor, s[3]/Factor
	n := e.outCh * h * w
	out := make([]float32, b*n)
	if err := runBatched(ctx, e.s, e.batch, image.Data().([]float32), b, 3*s[2]*s[3], []int64{3, int64(s[2]), int64(s[3])},
		out, n, []int64{int64(e.outCh), int64(h), int64(w)}); err != nil {
		return nil, err
	}
	if !e.params {
		return tensor.New(tensor.WithShape(b, e.outCh, h, w), tensor.WithBacking(out)), nil
	}
	m := e.latentCh * h * w
	mean := make([]float32, b*m)
	for i := range b {
		copy(mean[i*m:(i+1)*m], out[i*n:i*n+m])
	}
	return tensor.New(tensor.WithShape(b, e.latentCh, h, w), tensor.WithBacking(mean)), nil
}

// Close frees the encoder. It waits for calls in flight and is idempotent.
func (e *Encoder) Close() error { return e.s.Close() }
