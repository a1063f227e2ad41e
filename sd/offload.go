package sd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// Offload configures WithOffload: which components are loaded only while
// a request's stage that needs them runs, instead of for the Model's
// whole life. It trades load time per request for memory, as diffusers'
// enable_model_cpu_offload and stable-diffusion.cpp's freed parameters
// do: SDXL's two text encoders are 3.3 GB of float32 weights that a
// request uses for well under a second of its minutes.
type Offload struct {
	// TextEncoders loads the text encoder (SDXL: both) when a request's
	// prompts are encoded and frees it once no encoding is in flight, so
	// their weights are not in memory while the UNet and the VAE run.
	// Each request then pays for opening them (from the rewrite cache:
	// about a second per GB read). Memory admission counts their weights
	// (MemoryEstimate.TextWeights), since the budget is taken with them
	// unloaded, but only for the text-encoding stage: one request holds
	// the larger of its encoding (weights and arenas) and its largest
	// later stage whose memory is freed (the VAE's, and the UNet's when its
	// arena is off, SessionOptions.MemoryArena), beside what stays held
	// (the UNet's arena by default); requests in flight share one load of
	// the weights (memory.go).
	TextEncoders bool
}

// WithOffload loads the components o names only while they run (see
// Offload). The Folder's TextEncoder and TextEncoder2 are closed once it
// is loaded, before WithInt8 calibrates (which then loads them per
// prompt) and without WithWarmup warming them: its Components encode through
// the offloaded encoders. A single-file checkpoint that runs its own
// components (per-request LoRAs or embeddings) is refused with it.
func WithOffload(o Offload) LoadOption {
	return func(c *loadConfig) { c.offload = o }
}

// offloadText is the text encoding of a Folder opened with
// Offload.TextEncoders: the encoders' sessions exist while an Encode is in
// flight, and are opened by the first and closed by the last.
type offloadText struct {
	sig1, sig2 *textenc.Signature // sig2: SDXL's text_encoder_2, else nil
	tok2       *tokenizer.CLIP
	opts       session.Options
	auto       bool // the device was "auto": fall back to the CPU, as at load
	hidden     []int
	weights    int64 // the bytes of their weights, read when opened

	mu       sync.Mutex
	users    int
	te1, te2 *textenc.Model
	opens    int // times opened, for tests
}

// offloadTextEncoders replaces the folder's loaded text encoders by an
// offloadText: they are closed now, and opened per encoding from then on.
func (f *Folder) offloadTextEncoders(cfg *loadConfig) error {
	if !cfg.offload.TextEncoders || f.TextEncoder == nil {
		return nil
	}
	o := &offloadText{sig1: f.TextEncoder.Signature, opts: cfg.sessionOptions(TextEncoder), auto: cfg.auto(TextEncoder)}
	o.weights = weightBytes(o.sig1.Path(), o.sig1.ExternalData())
	o.hidden = []int{o.sig1.HiddenSize()}
	if f.TextEncoder2 != nil {
		o.sig2, o.tok2 = f.TextEncoder2.Signature, f.Tokenizer2
		o.weights += weightBytes(o.sig2.Path(), o.sig2.ExternalData())
		o.hidden = append(o.hidden, o.sig2.HiddenSize())
	}
	if slices.Contains(o.hidden, 0) { // a dynamic width: the pipeline's own
		o.hidden = nil
	}
	err := errors.Join(f.TextEncoder.Close(), closeText(f.TextEncoder2))
	if err != nil {
		return fmt.Errorf("sd: WithOffload: %w", err)
	}
	cfg.logger.Info("sd: text encoders offloaded: loaded per request", "weights", gib(o.weights))
	f.offText = o
	return nil
}

func closeText(m *textenc.Model) error {
	if m == nil {
		return nil
	}
	return m.Close()
}

// weightBytes returns the bytes of a model file and its external data.
func weightBytes(path string, ext []session.ExternalFile) int64 {
	var n int64
	if st, err := os.Stat(path); err == nil {
		n = st.Size()
	}
	for _, e := range ext {
		if st, err := os.Stat(filepath.Join(filepath.Dir(path), filepath.FromSlash(e.Name))); err == nil {
			n += st.Size()
		} else {
			n += e.Size
		}
	}
	return n
}

// acquire opens the encoders when no call holds them, and counts a user.
func (o *offloadText) acquire(ctx context.Context) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.users == 0 {
		start := time.Now()
		te1, err := o.open(ctx, o.sig1)
		if err != nil {
			return err
		}
		var te2 *textenc.Model
		if o.sig2 != nil {
			if te2, err = o.open(ctx, o.sig2); err != nil {
				return errors.Join(err, te1.Close())
			}
		}
		o.te1, o.te2 = te1, te2
		o.opens++
		if l := o.opts.Logger; l != nil {
			l.Debug("sd: offloaded text encoders opened", "duration", time.Since(start))
		}
	}
	o.users++
	return nil
}

func (o *offloadText) open(ctx context.Context, sig *textenc.Signature) (*textenc.Model, error) {
	m, err := sig.Open(ctx, o.opts)
	if _, ok := errors.AsType[*ort.ProviderError](err); ok && o.auto {
		opts := o.opts
		opts.Device, opts.ProviderOptions = session.CPU, nil
		m, err = sig.Open(ctx, opts)
	}
	if _, ok := errors.AsType[*ort.ProviderError](err); ok {
		return nil, &DeviceError{Component: TextEncoder, Device: Device(o.opts.Device), Err: err}
	}
	if err != nil {
		return nil, fmt.Errorf("sd: offloaded text encoder: %w", err)
	}
	return m, nil
}

// release closes the encoders when the last user is done, and hands the
// C heap's free pages back (int8_trim.go): their weights are tensors of
// tens of MB, which glibc takes from its heap once its mmap threshold has
// risen, and keeps resident when freed. Without the trim a second 1024²
// SDXL request (int8, offload, untiled decode) peaked at 9283 MiB against
// the first one's 6908, above what admission counted (BENCHMARKS.md).
func (o *offloadText) release() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.users--
	if o.users > 0 {
		return nil
	}
	err := errors.Join(o.te1.Close(), closeText(o.te2))
	o.te1, o.te2 = nil, nil
	trimHeap()
	return err
}

// Encode returns the hidden states as the loaded encoder(s) would.
func (o *offloadText) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	h, _, err := o.EncodePooled(ctx, ids, nil, batch)
	return h, err
}

// EncodePooled is xlEncoder's EncodePooled on SDXL; pooled is nil for a
// single text encoder.
func (o *offloadText) EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (hidden, pooled *tensor.Dense, err error) {
	if err := o.acquire(ctx); err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, o.release()) }()
	if o.te2 == nil {
		hidden, err = o.te1.Encode(ctx, ids, batch)
		return hidden, nil, err
	}
	return newXLEncoder(o.te1, o.te2, o.tok2).EncodePooled(ctx, ids, ids2, batch)
}

// HiddenParts returns the encoders' widths (pipeline.SplitEncoder).
func (o *offloadText) HiddenParts() []int { return o.hidden }

// close frees encoders still open (none once every call returned).
func (o *offloadText) close() error {
	if o == nil {
		return nil
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	err := errors.Join(closeText(o.te1), closeText(o.te2))
	o.te1, o.te2, o.users = nil, nil, 0
	return err
}
