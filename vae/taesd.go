package vae

import (
	"context"
	"fmt"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/session"
)

// Range is the pixel range of a TAESD model file's images.
type Range int

// The pixel ranges TAESD files use.
const (
	// Signed is [-1, 1], as the VAE's: diffusers' AutoencoderTiny and its
	// ONNX exports (vae_decoder/model.onnx), and the graphs sdpipe builds.
	Signed Range = iota
	// Unit is [0, 1]: madebyollin's taesd.py modules as they are
	// (taesd_decoder, taesd_encoder) and their ONNX exports.
	Unit
)

// readTAESD reads a TAESD half at path: one float input and a float first
// output, both of rank 4, whatever their names (read from the file).
func readTAESD(path, what string, inCh func(int64) error) (*model, error) {
	return read(path, func(bad func(string, ...any) error, ins, outs []ort.IOInfo) error {
		in := ins[0]
		if !isFloat(in.DType) || len(in.Shape) != 4 {
			return bad("TAESD %s input %s is %s%v, want float [batch, channels, height, width]", what, in.Name, in.DType, in.Shape)
		}
		if len(outs) == 0 || !isFloat(outs[0].DType) || len(outs[0].Shape) != 4 {
			return bad("TAESD %s first output is %v, want float [batch, channels, height, width]", what, outs)
		}
		if err := inCh(in.Shape[1]); err != nil {
			return bad("TAESD %s: %v", what, err)
		}
		return nil
	})
}

// TAESDDecoder is a loaded TAESD decoder (madebyollin's tiny autoencoder):
// it takes the latents as the UNet has them (TAESD has no scaling factor)
// and gives pixels in [-1, 1], whatever the file's range. Decode is safe
// for concurrent use; the caller must Close it.
type TAESDDecoder struct {
	session.Loaded // how it was loaded
	taesd
}

// taesd is what both TAESD halves hold: the session (Stats, Close), the
// latent channels and the file's pixel range.
type taesd struct {
	*model
	latentCh int
	rng      Range
}

// Path returns the model file.
func (h *taesd) Path() string { return h.path }

// LatentChannels returns the number of latent channels: those the decoder
// takes, or those the encoder returns.
func (h *taesd) LatentChannels() int { return h.latentCh }

// OpenTAESDDecoder loads the TAESD decoder at path, a model of one float
// input [batch, channels, h, w] and a first output [batch, 3, 8h, 8w] in
// the range r. The caller must Close it.
func OpenTAESDDecoder(ctx context.Context, path string, r Range, o session.Options) (*TAESDDecoder, error) {
	d := &TAESDDecoder{taesd: taesd{rng: r}}
	m, err := readTAESD(path, "decoder", func(c int64) error {
		if c <= 0 {
			return fmt.Errorf("latent channels %d, want a fixed count", c)
		}
		d.latentCh = int(c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if oc := m.outs[0].Shape[1]; oc > 0 && oc != 3 {
		return nil, ort.Bad("vae", path)("TAESD decoder output has %d channels, want 3", oc)
	}
	if d.model, err = m.open(ctx, o, func(batch int) []int64 { return []int64{int64(batch), int64(d.latentCh), 8, 8} }); err != nil {
		return nil, err
	}
	d.Loaded = d.loaded
	return d, nil
}

// Decode turns [batch, channels, h, w] latents as the UNet has them (not
// divided by any scaling factor) into [batch, 3, 8h, 8w] pixels in about
// [-1, 1], which the caller owns.
func (d *TAESDDecoder) Decode(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error) {
	s := latents.Shape()
	if err := checkLatents(s, d.latentCh); err != nil {
		return nil, err
	}
	b, h, w := s[0], s[2], s[3]
	out, err := d.decode(ctx, latents.Data().([]float32), b, d.latentCh, h, w)
	if err != nil {
		return nil, err
	}
	if d.rng == Unit {
		for i, v := range out {
			out[i] = 2*v - 1
		}
	}
	return tensor.New(tensor.WithShape(b, 3, h*Factor, w*Factor), tensor.WithBacking(out)), nil
}

// TAESDEncoder is a loaded TAESD encoder: pixels in [-1, 1], whatever the
// file's range, to latents as the UNet takes them (TAESD has no scaling
// factor). Encode is safe for concurrent use; the caller must Close it.
type TAESDEncoder struct {
	session.Loaded // how it was loaded
	taesd
}

// OpenTAESDEncoder loads the TAESD encoder at path, a model of one float
// input [batch, 3, H, W] in the range r and a first output
// [batch, channels, H/8, W/8]. The caller must Close it.
func OpenTAESDEncoder(ctx context.Context, path string, r Range, o session.Options) (*TAESDEncoder, error) {
	e := &TAESDEncoder{taesd: taesd{rng: r}}
	m, err := readTAESD(path, "encoder", func(c int64) error {
		if c > 0 && c != 3 {
			return fmt.Errorf("%d image channels, want 3", c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if e.latentCh = int(m.outs[0].Shape[1]); e.latentCh <= 0 {
		return nil, ort.Bad("vae", path)("TAESD encoder output %v, want a fixed channel count", m.outs[0].Shape)
	}
	if e.model, err = m.open(ctx, o, func(batch int) []int64 { return []int64{int64(batch), 3, 8 * Factor, 8 * Factor} }); err != nil {
		return nil, err
	}
	e.Loaded = e.loaded
	return e, nil
}

// Encode turns [batch, 3, H, W] pixels in [-1, 1] (H and W multiples of 8)
// into [batch, c, H/8, W/8] latents as the UNet takes them.
func (e *TAESDEncoder) Encode(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error) {
	s := image.Shape()
	if err := checkImage(s); err != nil {
		return nil, err
	}
	b, hp, wp := s[0], s[2], s[3]
	in := image.Data().([]float32)
	if e.rng == Unit {
		u := make([]float32, len(in))
		for i, v := range in {
			u[i] = (v + 1) / 2
		}
		in = u
	}
	out, err := e.encode(ctx, in, b, hp, wp, e.latentCh)
	if err != nil {
		return nil, err
	}
	return tensor.New(tensor.WithShape(b, e.latentCh, hp/Factor, wp/Factor), tensor.WithBacking(out)), nil
}
