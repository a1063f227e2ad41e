package sd

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/unet"
)

// Int8 configures WithInt8: the UNet run with int8 weights and int8
// arithmetic where ONNX Runtime's CPU kernels for it are fast.
//
// What is quantized: every MatMul and Gemm with constant weights
// (the attention projections, feed-forward layers and time embedding)
// becomes DynamicQuantizeMatMul: uint8 activations, quantized per tensor
// in each call, times int8 weights per output column. Every convolution
// but the first and the last becomes QLinearConv (uint8 × int8, weights
// per output channel) with activation ranges calibrated on the model's
// own run. Attention's activation × activation products, the
// normalisations, Softmax and the elementwise ops stay float32, and so
// does the VAE; the text encoder too, unless TextEncoder asks for its
// MatMuls in int8.
//
// Why dynamic for MatMul and calibrated for Conv: ONNX Runtime's fast
// int8 kernels take uint8 activations and int8 weights. For MatMul one
// exists that quantizes its input itself (DynamicQuantizeMatMul, 4.3× the
// float32 MatMul on an AVX-512 VNNI Zen machine, bench -kernels), so the
// activation scale follows each step's values for free and no calibration
// can go stale. For Conv the only fast one is QLinearConv (6.4× there),
// which needs its output scale as a constant; the dynamic form
// (ConvInteger) has no uint8 × int8 kernel and its uint8 × uint8 one ran
// at 1.1–1.3× the float32 Conv. So convolutions are calibrated: the
// prompt set (Prompts) is generated in float32 at Size and Steps, every
// UNet call of those runs is recorded, and the range of each
// convolution's input and output over all of them (every step, both
// guidance rows), widened by 5 %, fixes its scale. The ranges are cached
// by the model's content hash and the calibration settings, so only the
// first open calibrates.
//
// The quantized UNet is written once into the rewrite cache with its
// weights stored as int8, so the loaded UNet holds about a quarter of the
// float32 weights. It is opt-in until its quality is shown on the model
// at hand: BENCHMARKS.md has the figures measured.
type Int8 struct {
	// MatMulOnly quantizes only the MatMul and Gemm layers (dynamic, no
	// calibration): the convolutions stay float32.
	MatMulOnly bool
	// Prompts is the calibration prompt set; nil means the model's
	// example prompts (its sdpipe.json), else four built-in ones.
	Prompts []string
	// Size is the calibration image size; 0 means the model's default
	// size, at most 256.
	Size int
	// Steps is the calibration run's steps (the model's own scheduler);
	// 0 means 8.
	Steps int
	// TextEncoder also quantizes the text encoders' MatMuls (SDXL's
	// text_encoder_2 too): dynamic, as the UNet's are, so no calibration
	// (textenc.Signature.OpenInt8). Each is checked against float32 on
	// its own example input, and one that differs by more than
	// textenc.Int8's bound makes OpenFolder fail with an error wrapping
	// textenc.ErrInt8. It cuts the SD 1.5 text encoder's resident weights
	// by about 250 MB; the UNet is then calibrated on the int8 text
	// encoder's embeddings.
	TextEncoder bool
}

// WithInt8 loads the UNet quantized to int8 (see Int8), and the text
// encoders with Int8.TextEncoder. A UNet that cannot be quantized (a
// float16 graph, or one that would differ from float32 by more than
// unet.Int8.MaxRelError on the check inputs) makes OpenFolder fail with
// an error wrapping unet.ErrInt8, a text encoder likewise with
// textenc.ErrInt8: int8 was asked for, so it is never silently dropped.
// The load report's Rewrites says what was quantized.
func WithInt8(q Int8) LoadOption {
	return func(c *loadConfig) { c.perf.int8 = &q }
}

// calibrationPrompts are the prompts a model without example prompts is
// calibrated on.
var calibrationPrompts = []string{
	"a photo of an astronaut riding a horse on mars",
	"a watercolor painting of a lighthouse at dusk, soft light",
	"portrait of an old man with a beard, detailed, studio lighting",
	"a bowl of fruit on a wooden table, still life",
}

func (q *Int8) check() []error {
	if q == nil {
		return nil
	}
	var errs []error
	if q.Size < 0 || q.Size%8 != 0 {
		errs = append(errs, fmt.Errorf("sd: WithInt8: calibration size %d is not a positive multiple of 8", q.Size))
	}
	if q.Steps < 0 {
		errs = append(errs, fmt.Errorf("sd: WithInt8: negative calibration steps %d", q.Steps))
	}
	return errs
}

// int8State is what a Folder opening with WithInt8 keeps between loading
// its components and calibrating.
type int8State struct {
	pending *unet.Signature // calibration runs after the other components load
	opts    session.Options
}

// calibration returns the calibration settings for f, and the ID the
// ranges are cached under.
func (q *Int8) calibration(f *Folder) (prompts []string, size, steps int, id string) {
	prompts = q.Prompts
	if prompts == nil {
		prompts = f.Info.ExamplePrompts
	}
	if len(prompts) == 0 {
		prompts = calibrationPrompts
	}
	size = q.Size
	if size == 0 {
		d := f.defaults(Defaults{})
		size = min(d.Width, d.Height, 256)
	}
	steps = q.Steps
	if steps == 0 {
		steps = 8
	}
	id = fmt.Sprintf("sd calibration v1 size=%d steps=%d seeds=1.. prompts=%q", size, steps, prompts)
	if q.TextEncoder { // the run's embeddings come from the int8 text encoder
		id += " text-encoder=int8"
	}
	return prompts, size, steps, id
}

func (q *Int8) unetOptions(f *Folder) unet.Int8 {
	_, _, _, id := q.calibration(f)
	return unet.Int8{Conv: !q.MatMulOnly, CalibrationID: id}
}

// openUNet opens the UNet of sig, int8 when the folder opens with
// WithInt8. When the int8 convolutions' ranges are not cached yet the
// float32 UNet is opened, and calibrateInt8 replaces it once the other
// components are loaded.
func (f *Folder) openUNet(ctx context.Context, sig *unet.Signature, o session.Options, cfg *loadConfig) (*unet.Model, error) {
	q := cfg.perf.int8
	if q == nil {
		return cfg.openUNet(ctx, sig, o) // stepcache.go
	}
	if o.Device != session.CPU {
		return nil, int8Refused(fmt.Sprintf("the UNet runs on %s; the int8 kernels are ONNX Runtime's CPU ones", o.Device))
	}
	m, rep, err := openInt8(ctx, sig, o, q.unetOptions(f), nil, cfg)
	if errors.Is(err, unet.ErrNeedCalls) {
		f.int8 = int8State{pending: sig, opts: o}
		return sig.Open(ctx, o)
	}
	if err != nil {
		return nil, fmt.Errorf("sd: WithInt8: %w", err)
	}
	logInt8(cfg, rep)
	return m, nil
}

// openTextEncoder opens a text encoder (SDXL's text_encoder_2 too), int8
// when the folder opens with WithInt8 and Int8.TextEncoder.
func (cfg *loadConfig) openTextEncoder(ctx context.Context, sig *textenc.Signature, o session.Options) (*textenc.Model, error) {
	q := cfg.perf.int8
	if q == nil || !q.TextEncoder {
		return sig.Open(ctx, o)
	}
	if o.Device != session.CPU {
		return nil, fmt.Errorf("sd: WithInt8: the text encoder runs on %s; the int8 kernels are ONNX Runtime's CPU ones: %w", o.Device, textenc.ErrInt8)
	}
	m, rep, err := sig.OpenInt8(ctx, o, textenc.Int8{})
	if err != nil {
		return nil, fmt.Errorf("sd: WithInt8: %w", err)
	}
	cfg.logger.Info("sd: text encoder runs in int8", "quantized", rep.Summary, "kept_float32", len(rep.Kept),
		"check_rel_rms", rep.RelRMS, "cached", rep.Cached)
	return m, nil
}

// openInt8 opens the int8 UNet, split for step caching when
// WithStepCache asked for it too: quantized first, then split, so that
// both halves run int8 (unet.Signature.OpenInt8StepCache).
func openInt8(ctx context.Context, sig *unet.Signature, o session.Options, q unet.Int8, calls *unet.Calls, cfg *loadConfig) (*unet.Model, unet.Int8Report, error) {
	if cfg.stepCache != nil {
		return sig.OpenInt8StepCache(ctx, o, q, calls, *cfg.stepCache)
	}
	return sig.OpenInt8(ctx, o, q, calls)
}

func logInt8(cfg *loadConfig, rep unet.Int8Report) {
	cfg.logger.Info("sd: UNet runs in int8", "quantized", rep.Summary, "kept_float32", len(rep.Kept),
		"check_rel_rms", rep.RelRMS, "calibrated_calls", rep.Calibrated, "cached", rep.Cached)
	for _, k := range rep.Kept {
		cfg.logger.Debug("sd: int8: kept in float32", "layer", k)
	}
}

// calibrateInt8 runs the calibration prompts through the float32 UNet
// (the VAE decode skipped), recording every UNet call, then closes it and
// opens the int8 UNet calibrated on those calls in its place.
func (f *Folder) calibrateInt8(ctx context.Context, cfg *loadConfig) error {
	st := f.int8
	if st.pending == nil {
		return nil
	}
	f.int8 = int8State{}
	q := cfg.perf.int8
	prompts, size, steps, _ := q.calibration(f)
	start := time.Now()
	c := f.Components()
	c.VAEDecoder = pipeline.DecoderFunc(func(_ context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		s := lat.Shape()
		return tensor.New(tensor.WithShape(s[0], 3, 8*s[2], 8*s[3]), tensor.WithBacking(make([]float32, s[0]*3*64*s[2]*s[3]))), nil
	})
	c.VAEEncoder = nil
	p, err := pipeline.New(c, pipeline.Options{DefaultGuidance: f.defaults(Defaults{}).GuidanceScale})
	if err != nil {
		return fmt.Errorf("sd: WithInt8: calibration: %w", err)
	}
	calls := &unet.Calls{}
	stop := f.UNet.Record(calls)
	for i, pr := range prompts {
		if _, err = p.Generate(ctx, pipeline.Request{Prompt: pr, Width: size, Height: size, Steps: steps, Seed: int64(i + 1)}); err != nil {
			break
		}
	}
	stop()
	err = errors.Join(err, p.Close())
	if err != nil {
		return fmt.Errorf("sd: WithInt8: calibration run: %w", err)
	}
	cfg.logger.Info("sd: int8 calibration run", "prompts", len(prompts), "size", size, "steps", steps,
		"unet_calls", calls.Len(), "duration", time.Since(start))
	// one UNet in memory at a time: the float32 one goes before the
	// calibration session opens
	err = f.UNet.Close()
	f.UNet = nil
	if err != nil {
		return fmt.Errorf("sd: %w", err)
	}
	trimHeap()
	m, rep, err := openInt8(ctx, st.pending, st.opts, q.unetOptions(f), calls, cfg)
	if err != nil {
		return fmt.Errorf("sd: WithInt8: %w", err)
	}
	f.UNet = m
	logInt8(cfg, rep)
	f.load.rewrote(UNet, m.Loaded.Rewrites)
	f.readSignature(UNet, m.Loaded.File, cfg.logger)
	f.load.mu.Lock()
	if f.load.r.Open != nil {
		f.load.r.Open[UNet] += time.Since(start)
	}
	f.load.mu.Unlock()
	return nil
}

// int8Refused is the error for a model int8 cannot apply to.
func int8Refused(what string) error {
	return fmt.Errorf("sd: WithInt8: %s: %w", strings.TrimSpace(what), unet.ErrInt8)
}
