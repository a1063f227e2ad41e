package sd

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// DefaultScalingFactor is the VAE scaling factor of Stable Diffusion 1.x and
// 2.x, used when the folder's VAE config does not give one.
const DefaultScalingFactor = 0.18215

// File names of the diffusers layout.
const (
	indexFile     = "model_index.json"
	schedulerFile = "scheduler/scheduler_config.json"
	modelFile     = "model.onnx"
	configFile    = "config.json"
	tokenizerDir  = "tokenizer"
)

// Folder is an opened model folder in the diffusers ONNX layout (the legacy
// diffusers exporter's or optimum's): every component loaded and checked
// against the others. Its models are safe for concurrent use; the caller must
// Close the Folder, and must not use its models after that.
type Folder struct {
	Dir           string            // the folder, as given to OpenFolder
	Index         ModelIndex        // model_index.json
	Tokenizer     *tokenizer.CLIP   // tokenizer/
	TextEncoder   *textenc.Model    // text_encoder/model.onnx (for SDXL: its penultimate hidden states)
	Tokenizer2    *tokenizer.CLIP   // SDXL's tokenizer_2/, else nil
	TextEncoder2  *textenc.Model    // SDXL's text_encoder_2/model.onnx (penultimate hidden states and text_embeds), else nil
	UNet          *unet.Model       // unet/model.onnx
	VAEDecoder    *vae.Decoder      // vae_decoder/model.onnx
	VAEEncoder    *vae.Encoder      // vae_encoder/model.onnx; nil when absent or skipped (WithoutVAEEncoder)
	Scheduler     *scheduler.Config // scheduler/scheduler_config.json
	ScalingFactor float64           // scaling_factor of vae_decoder/config.json or vae/config.json, else DefaultScalingFactor
	Info          ModelInfo         // sdpipe.json, when the folder has one
	sampleSize    int               // unet/config.json's sample_size, or 0
	zeroEmpty     bool              // SDXL's force_zeros_for_empty_prompt
	sigMu         sync.Mutex
	sigs          map[Component]*memSignature // what decides each component's memory (memory.go)
	te2Sig        *memSignature               // the same for SDXL's text_encoder_2
	closeOnce     sync.Once
	closeErr      error
	load          loadState    // load times, rewrites and warm-up (perf.go)
	int8          int8State    // WithInt8's calibration (int8.go)
	offText       *offloadText // WithOffload's text encoding (offload.go), nil without
}

// OpenFolder opens the model folder dir. It first checks the folder without
// loading any weights: model_index.json, the scheduler and tokenizer files,
// each component's model.onnx and the external data files it references
// (weights.pb, model.onnx_data), any config.json, and that the components'
// dimensions fit together (text encoder hidden size and UNet cross-attention
// width, UNet and VAE latent channels, tokenizer and text encoder vocabulary
// and sequence length). Every problem found is reported, as *FolderError
// values joined together. Only then does it load the text encoder, UNet and
// VAE sessions, one after the other, each with its graph rewritten and
// verified first unless WithoutRewrites is given (see Rewrite); if one
// fails, those already loaded are closed.
// The VAE encoder is optional: a folder without vae_encoder/ opens with
// Folder.VAEEncoder nil, but a broken one is an error unless
// WithoutVAEEncoder is given.
//
// The options are checked first, all at once. A missing ONNX Runtime library
// gives an error matching ErrLibraryNotFound, an unavailable device a
// *DeviceError, a canceled ctx one matching ctx.Err(). The
// caller must Close the Folder. OpenFolder is safe for concurrent use.
func OpenFolder(ctx context.Context, dir string, opts ...LoadOption) (*Folder, error) {
	cfg, err := newLoadConfig(opts)
	if err != nil {
		return nil, err
	}
	if path, isCkpt, err := checkpointPath(dir); err != nil || isCkpt { // checkpoint.go
		if err != nil {
			return nil, err
		}
		plain := *cfg // per-request LoRAs and embeddings need Open
		plain.ckpt.loraDir, plain.ckpt.embeddings = "", ""
		if dir, _, err = openCheckpoint(ctx, path, &plain); err != nil {
			return nil, err
		}
	}
	return openFolder(ctx, dir, cfg)
}

func openFolder(ctx context.Context, dir string, cfg *loadConfig) (*Folder, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lay, err := inspect(dir, cfg)
	if err != nil {
		return nil, err
	}
	if _, _, err := ort.Version(cfg.libraryPath); err != nil {
		return nil, fmt.Errorf("sd: %w", err)
	}
	f := &Folder{
		Dir:           dir,
		Index:         lay.index,
		Tokenizer:     lay.tok,
		Scheduler:     lay.sched,
		ScalingFactor: lay.scaling,
		Info:          lay.info,
		sampleSize:    lay.sampleSize,
	}
	// one component at a time: loading them side by side left 0.3 GiB more
	// resident for SD 1.5 (4.76 against 4.48 GiB) to save 1.7 s of a
	// 9.3 s open (BENCHMARKS.md)
	for _, c := range components {
		if lay.sigs[c] == nil {
			continue // an absent or skipped VAE encoder
		}
		if err = f.load1(ctx, c, lay, cfg); err != nil {
			return nil, errors.Join(err, f.closeModels())
		}
	}
	if lay.xl != nil {
		if err := f.loadXL(ctx, lay, cfg); err != nil { // xl.go
			return nil, errors.Join(err, f.closeModels())
		}
	}
	if err := f.offloadTextEncoders(cfg); err != nil { // WithOffload (offload.go): before calibrating, which then encodes through them
		return nil, errors.Join(err, f.closeModels())
	}
	if err := f.calibrateInt8(ctx, cfg); err != nil { // WithInt8 (int8.go)
		return nil, errors.Join(err, f.closeModels())
	}
	// what loading freed goes back to the system (int8_trim.go)
	trimHeap()
	if err := f.warm(ctx, cfg); err != nil { // WithWarmup (perf.go)
		return nil, errors.Join(err, f.closeModels())
	}
	return f, nil
}

// load1 loads component c with its signature as inspect read it, each
// component rewriting, verifying and opening its own model.
func (f *Folder) load1(ctx context.Context, c Component, lay *layout, cfg *loadConfig) error {
	o := cfg.sessionOptions(c)
	start := time.Now()
	open := func(o session.Options) (err error) {
		switch sig := lay.sigs[c].(type) {
		case *textenc.Signature:
			f.TextEncoder, err = cfg.openTextEncoder(ctx, sig, o) // WithInt8 (int8.go)
		case *unet.Signature:
			f.UNet, err = f.openUNet(ctx, sig, o, cfg) // WithInt8 (int8.go), WithStepCache (stepcache.go)
		case *vae.DecoderSignature:
			if lay.upcastVAE {
				sig = upcastDecoder(sig, o, cfg.logger)
			}
			f.VAEDecoder, err = sig.Open(ctx, o)
		case *vae.EncoderSignature:
			f.VAEEncoder, err = sig.Open(ctx, o)
		}
		return err
	}
	err := open(o)
	if _, ok := errors.AsType[*ort.ProviderError](err); ok && cfg.auto(c) {
		// an explicit "auto" choice falls back to the CPU, said aloud
		cfg.logger.Warn("sd: GPU unavailable, running on the CPU", "component", c.String(), "error", err)
		o.Device, o.ProviderOptions = session.CPU, nil
		err = open(o)
	}
	if err != nil {
		return openError(lay.dir, c, o.Device, err)
	}
	l := f.loaded(c)
	f.readSignature(c, l.File, cfg.logger)
	cfg.logger.Info("sd: loaded", "component", c.String(), "path", l.File,
		"device", string(o.Device), "duration", time.Since(start))
	f.load.opened(c, time.Since(start))
	if l.Rewrites != "" {
		f.load.rewrote(c, l.Rewrites)
	}
	return nil
}

// loaded says how component c was loaded.
func (f *Folder) loaded(c Component) session.Loaded {
	switch c {
	case TextEncoder:
		return f.TextEncoder.Loaded
	case UNet:
		return f.UNet.Loaded
	case VAEDecoder:
		return f.VAEDecoder.Loaded
	}
	return f.VAEEncoder.Loaded
}

// Close frees every model of the folder. It is idempotent: later calls
// return the first call's result. It must not be called while a model is in
// use.
func (f *Folder) Close() error {
	if f == nil {
		return nil
	}
	f.closeOnce.Do(func() { f.closeErr = f.closeModels() })
	return f.closeErr
}

func (f *Folder) closeModels() error {
	errs := []error{f.offText.close()}
	if f.VAEEncoder != nil {
		errs = append(errs, f.VAEEncoder.Close())
	}
	if f.VAEDecoder != nil {
		errs = append(errs, f.VAEDecoder.Close())
	}
	if f.UNet != nil {
		errs = append(errs, f.UNet.Close())
	}
	if f.TextEncoder != nil {
		errs = append(errs, f.TextEncoder.Close())
	}
	if f.TextEncoder2 != nil {
		errs = append(errs, f.TextEncoder2.Close())
	}
	return errors.Join(errs...)
}

// openError words an error from a component package's Open.
func openError(dir string, c Component, p session.Device, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("sd: loading %s: %w", c, err)
	}
	if errors.Is(err, ort.ErrLibraryNotFound) {
		return fmt.Errorf("sd: %w", err)
	}
	if _, ok := errors.AsType[*ort.ProviderError](err); ok {
		return &DeviceError{Component: c, Device: Device(p), Err: err}
	}
	return &FolderError{Dir: dir, File: c.String() + "/" + modelFile, Err: err}
}

func componentNoun(c Component) string {
	switch c {
	case TextEncoder:
		return "text encoder"
	case UNet:
		return "UNet"
	case VAEDecoder:
		return "VAE decoder"
	case VAEEncoder:
		return "VAE encoder"
	}
	return c.String()
}
