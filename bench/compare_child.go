package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/unet"
)

// childSpec is what the parent hands a configuration's child process (as
// the JSON value of the hidden -compare-child flag).
type childSpec struct {
	Variant      Variant `json:"variant"`
	Round        int     `json:"round"`
	ModelDir     string  `json:"model"`
	LibraryPath  string  `json:"lib,omitempty"`
	RewriteCache string  `json:"rewrite_cache,omitempty"`
	Width        int     `json:"width"`
	Height       int     `json:"height"`
	Steps        int     `json:"steps"`
	WarmupSteps  int     `json:"warmup_steps"`
	Scheduler    string  `json:"scheduler,omitempty"`
	Guidance     float64 `json:"guidance"`
	Prompt       string  `json:"prompt"`
	Seed         int64   `json:"seed"`
	Interval     int     `json:"step_cache_interval"`
	Branch       int     `json:"step_cache_branch"`
	// Result is the JSON file the child writes its ChildResult to; the
	// image goes beside it (.f32: raw float32 pixels, .png).
	Result string `json:"result"`
}

// ChildResult is what one configuration's child process measured. Times
// are in seconds, sizes in bytes.
type ChildResult struct {
	Variant Variant `json:"variant"`
	Round   int     `json:"round"`
	// Refused is sd's refusal (an error wrapping unet.ErrInt8) when the
	// library does not support the configuration; nothing else is set.
	Refused string  `json:"refused,omitempty"`
	OpenS   float64 `json:"open_s"`
	// UNetRewrite is what the load report says was done to the UNet.
	UNetRewrite string  `json:"unet_rewrite"`
	WarmupS     float64 `json:"warmup_s"` // one image of WarmupSteps, not timed below
	WarmupSteps int     `json:"warmup_steps"`
	// ImageS is one whole image: text encoder, every step, VAE decode.
	ImageS   float64 `json:"image_s"`
	EncodeS  float64 `json:"encode_s"`
	DenoiseS float64 `json:"denoise_s"`
	DecodeS  float64 `json:"decode_s"`
	// The UNet calls of the timed image: full calls, and shallow ones
	// under step caching.
	CallS          []float64 `json:"unet_call_s"`
	FullCalls      int       `json:"full_calls"`
	ShallowCalls   int       `json:"shallow_calls"`
	CallMedianS    float64   `json:"unet_call_median_s"`    // all calls
	FullMedianS    float64   `json:"full_call_median_s"`    // full calls
	ShallowMedianS float64   `json:"shallow_call_median_s"` // 0 without step caching
	SeqLen         int       `json:"seq_len"`
	Scheduler      string    `json:"scheduler"`  // the one that ran
	RSSLoaded      int64     `json:"rss_loaded"` // VmRSS after the open
	VmHWM          int64     `json:"vm_hwm"`     // the child's own peak at the end
	Image          string    `json:"image"`      // raw little-endian float32 [h, w, 3] in [0, 1]
	PNG            string    `json:"png"`
}

// runChild is the child process: it opens the model in spec's
// configuration, warms up, times one image and writes its result.
func runChild(ctx context.Context, specJSON string, stderr io.Writer) error {
	var spec childSpec
	if err := json.Unmarshal([]byte(specJSON), &spec); err != nil {
		return fmt.Errorf("bench: -compare-child: %w", err)
	}
	res, err := measureChild(ctx, spec, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return fmt.Errorf("bench: %s: %w", spec.Variant, err)
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(spec.Result, b, 0o644)
}

func measureChild(ctx context.Context, spec childSpec, log *slog.Logger) (*ChildResult, error) {
	res := &ChildResult{Variant: spec.Variant, Round: spec.Round, WarmupSteps: spec.WarmupSteps}
	opts := []sd.LoadOption{sd.WithoutVAEEncoder(), sd.WithLogger(log)}
	if spec.LibraryPath != "" {
		opts = append(opts, sd.WithLibraryPath(spec.LibraryPath))
	}
	if spec.RewriteCache != "" {
		opts = append(opts, sd.WithRewriteCache(spec.RewriteCache))
	}
	vo, err := spec.Variant.options(spec.Interval, spec.Branch)
	if err != nil {
		return nil, err
	}
	opts = append(opts, vo...)
	t0 := time.Now()
	f, err := sd.OpenFolder(ctx, spec.ModelDir, opts...)
	if errors.Is(err, unet.ErrInt8) {
		res.Refused = err.Error()
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	res.OpenS = time.Since(t0).Seconds()
	res.UNetRewrite = f.Load().Rewrites[sd.UNet]
	res.RSSLoaded = procStatus("VmRSS")
	res.SeqLen = f.Tokenizer.MaxLength()
	res.Scheduler = spec.Scheduler
	if res.Scheduler == "" {
		res.Scheduler = f.Scheduler.ClassName()
	}
	c := f.Components()
	tu := &timedUNet{m: f.UNet}
	c.UNet = tu
	p, err := pipeline.New(c, pipeline.Options{})
	if err != nil {
		return nil, err
	}
	defer p.Close()
	req := pipeline.Request{
		Prompt: spec.Prompt, Width: spec.Width, Height: spec.Height, Steps: spec.WarmupSteps,
		GuidanceScale: new(spec.Guidance), Scheduler: spec.Scheduler, Seed: spec.Seed, Generator: rng.KindNumpy,
	}
	log.Info("bench: compare child opened", "config", spec.Variant, "round", spec.Round, "open_s", res.OpenS, "unet", res.UNetRewrite)
	t0 = time.Now()
	if _, err := p.Generate(ctx, req); err != nil {
		return nil, fmt.Errorf("warm-up: %w", err)
	}
	res.WarmupS = time.Since(t0).Seconds()
	tu.reset()
	req.Steps = spec.Steps
	t0 = time.Now()
	out, err := p.Generate(ctx, req)
	if err != nil {
		return nil, err
	}
	res.ImageS = time.Since(t0).Seconds()
	res.VmHWM = procStatus("VmHWM")
	m := out.Metrics
	res.EncodeS, res.DenoiseS, res.DecodeS = m.Encode.Seconds(), m.Denoise.Seconds(), m.Decode.Seconds()
	var full, shallow []float64
	for _, call := range tu.reset() {
		s := call.d.Seconds()
		res.CallS = append(res.CallS, s)
		if call.shallow {
			shallow = append(shallow, s)
		} else {
			full = append(full, s)
		}
	}
	res.FullCalls, res.ShallowCalls = len(full), len(shallow)
	res.CallMedianS, res.FullMedianS = median0(res.CallS), median0(full)
	res.ShallowMedianS = median0(shallow)
	log.Info("bench: compare child done", "config", spec.Variant, "image_s", res.ImageS, "unet_call_median_s", res.CallMedianS)
	res.Image = filepath.Join(filepath.Dir(spec.Result), fmt.Sprintf("%d-%s.f32", spec.Round, spec.Variant.file()))
	res.PNG = res.Image[:len(res.Image)-len(".f32")] + ".png"
	return res, errors.Join(writePixels(res.Image, out.Pixels), writePNG(res.PNG, out))
}

// median0 is median, or 0 for no values.
func median0(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	return median(v)
}

func writePixels(path string, px *tensor.Dense) error {
	d := px.Data().([]float32)
	b := make([]byte, 0, 4*len(d))
	for _, v := range d {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(v))
	}
	return os.WriteFile(path, b, 0o644)
}

func writePNG(path string, res *pipeline.Result) error {
	if len(res.Images) == 0 {
		return fmt.Errorf("bench: no image")
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(png.Encode(f, res.Images[0]), f.Close())
}

// readPixels reads what writePixels wrote.
func readPixels(path string) ([]float32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b)%4 != 0 {
		return nil, fmt.Errorf("bench: %s: %d bytes is not float32 data", path, len(b))
	}
	d := make([]float32, len(b)/4)
	for i := range d {
		d[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return d, nil
}

// timedUNet is the UNet with each call's duration recorded, a call with
// step-cache features counted as shallow. It has unet.Model's methods, so
// the pipeline uses it exactly as the model itself.
type timedUNet struct {
	m     *unet.Model
	mu    sync.Mutex
	calls []unetCall
}

type unetCall struct {
	d       time.Duration
	shallow bool
}

func (t *timedUNet) add(start time.Time, shallow bool) {
	d := time.Since(start)
	t.mu.Lock()
	t.calls = append(t.calls, unetCall{d, shallow})
	t.mu.Unlock()
}

// reset forgets the calls recorded and returns them.
func (t *timedUNet) reset() []unetCall {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := slices.Clone(t.calls)
	t.calls = nil
	return c
}

func (t *timedUNet) Predict(ctx context.Context, x *tensor.Dense, ts []float64, c *tensor.Dense) (*tensor.Dense, error) {
	defer t.add(time.Now(), false)
	return t.m.Predict(ctx, x, ts, c)
}

func (t *timedUNet) PredictAdded(ctx context.Context, x *tensor.Dense, ts []float64, c, textEmbeds, timeIDs *tensor.Dense) (*tensor.Dense, error) {
	defer t.add(time.Now(), false)
	return t.m.PredictAdded(ctx, x, ts, c, textEmbeds, timeIDs)
}

func (t *timedUNet) PredictCond(ctx context.Context, x *tensor.Dense, ts []float64, c, timestepCond *tensor.Dense) (*tensor.Dense, error) {
	defer t.add(time.Now(), false)
	return t.m.PredictCond(ctx, x, ts, c, timestepCond)
}

func (t *timedUNet) StepCacheInterval() int { return t.m.StepCacheInterval() }

func (t *timedUNet) PredictStep(ctx context.Context, x *tensor.Dense, ts []float64, c, textEmbeds, timeIDs, timestepCond, features *tensor.Dense) (pred, deep *tensor.Dense, err error) {
	defer t.add(time.Now(), features != nil)
	return t.m.PredictStep(ctx, x, ts, c, textEmbeds, timeIDs, timestepCond, features)
}
