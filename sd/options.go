package sd

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/unet"
)

// An Option configures Open. There are two kinds, typed by what they
// configure: a LoadOption says how the folder's models are loaded (Open
// and OpenFolder take it), an EngineOption how the engine runs them (only
// Open takes it). Options only record values; Open checks them all at
// once and reports every invalid one in one error. An Option may be reused
// and shared between goroutines.
type Option interface {
	apply(*config)
}

// A LoadOption configures how the models of a folder are loaded: devices,
// threads, ONNX Runtime session settings, rewrites and warm-up.
type LoadOption func(*loadConfig)

func (o LoadOption) apply(c *config) { o(&c.load) }

// config is what the options of Open record.
type config struct {
	load   loadConfig
	engine engineConfig
}

// loadConfig is what the LoadOptions record.
type loadConfig struct {
	libraryPath    string
	comps          map[Component]*placement
	skipVAEEncoder bool
	logger         *slog.Logger
	perf           perfConfig       // rewrites and warm-up (perf.go)
	ckpt           checkpointConfig // single-file checkpoints (checkpoint.go)
	stepCache      *unet.StepCache  // WithStepCache (stepcache.go), nil when off
	offload        Offload          // WithOffload (offload.go)
	errs           []error          // from options given invalid arguments
}

// Component names one ONNX model of a Stable Diffusion folder, for the
// per-component options such as WithDevice.
type Component int

// The components of a diffusers ONNX model folder. Each String value is the
// name of the component's subfolder.
const (
	TextEncoder Component = iota // text_encoder/: CLIP text encoder
	UNet                         // unet/: the denoiser
	VAEDecoder                   // vae_decoder/: latents to pixels
	VAEEncoder                   // vae_encoder/: pixels to latents (img2img)
)

// components lists every Component in load order.
var components = [...]Component{TextEncoder, UNet, VAEDecoder, VAEEncoder}

// String returns the component's folder name ("text_encoder", "unet",
// "vae_decoder", "vae_encoder"), or "Component(n)" for an unknown value.
func (c Component) String() string {
	switch c {
	case TextEncoder:
		return "text_encoder"
	case UNet:
		return "unet"
	case VAEDecoder:
		return "vae_decoder"
	case VAEEncoder:
		return "vae_encoder"
	}
	return fmt.Sprintf("Component(%d)", int(c))
}

func (c Component) valid() bool { return c >= TextEncoder && c <= VAEEncoder }

// Device names where a component runs: the CPU or an ONNX Runtime execution
// provider. Which providers work depends on how the loaded ONNX Runtime
// library was built; an unavailable one makes Open fail with an error that
// says so. Provider settings such as "device_id" go through
// SessionOptions.ProviderOptions.
type Device string

// The devices Open accepts.
const (
	CPU      Device = "cpu"
	CUDA     Device = "cuda"
	TensorRT Device = "tensorrt"
	CoreML   Device = "coreml"
	DirectML Device = "directml"
	OpenVINO Device = "openvino"
	WebGPU   Device = "webgpu"
	// Auto tries the GPU (WebGPU) and falls back to the CPU with a logged
	// warning when it is unavailable. No other device falls back.
	Auto Device = "auto"
)

// providers maps each Device to the component packages' device.
var providers = map[Device]session.Device{
	CPU:      session.CPU,
	CUDA:     session.CUDA,
	TensorRT: session.TensorRT,
	CoreML:   session.CoreML,
	DirectML: session.DirectML,
	OpenVINO: session.OpenVINO,
	WebGPU:   session.WebGPU,
	Auto:     session.WebGPU,
}

// Switch is a setting that is left to its default (the zero value), or
// turned On or Off.
type Switch int8

// The values of a Switch other than the default.
const (
	On  Switch = 1
	Off Switch = -1
)

// String returns "on", "off" or "default".
func (s Switch) String() string {
	switch s {
	case 0:
		return "default"
	case On:
		return "on"
	case Off:
		return "off"
	}
	return fmt.Sprintf("Switch(%d)", int(s))
}

func (s Switch) valid() bool { return s == 0 || s == On || s == Off }

// or returns whether s is on, def when it is the default.
func (s Switch) or(def bool) bool {
	if s == 0 {
		return def
	}
	return s == On
}

// SessionOptions are ONNX Runtime's own settings for one component's
// session, for tuning memory and latency; the zero value keeps the
// defaults, which the bench chose (BENCHMARKS.md).
type SessionOptions struct {
	// ProviderOptions are passed to the component's execution provider,
	// e.g. {"device_id": "1"} for CUDA. The map is copied.
	ProviderOptions map[string]string
	// MemoryPattern is ONNX Runtime's memory pattern planner, which
	// allocates a call's intermediate tensors as one planned block; off,
	// they come one by one from the memory arena, which holds less memory
	// at once. By default it is off for the UNet and the VAE, where at
	// 512×512 it holds 0.25 GiB (UNet) and 0.9 GiB (VAE decoder) more for
	// no speed, and on for the text encoder.
	MemoryPattern Switch
	// MemoryArena is ONNX Runtime's CPU memory arena. The arena keeps the
	// largest amount of memory a call has needed for the next calls; off,
	// a call's memory goes back to the system when it ends, so that
	// sessions that run one after the other do not each hold their peak.
	// By default it is on for the text encoder and the UNet and off for
	// the VAE, whose few large tensors the arena's doubling growth
	// rounds up: an SD 1.5 decode at 768×768 peaked at 3.5 GiB with it and
	// 1.7 GiB without. The cost is speed: a 512×512 decode took 1.3× as
	// long without it on a quiet machine (about 2% of a 20-step image), a
	// 256×256 one 4% longer on a loaded one (BENCHMARKS.md).
	MemoryArena Switch
	// Spinning lets the idle threads of the session's pool spin for more
	// work before they sleep (ONNX Runtime's allow_spinning; on by
	// default). Spinning lowers the latency of a lone request; off leaves
	// the cores to other sessions and processes that run at the same time.
	Spinning Switch
}

// placement is what the options say about one component.
type placement struct {
	device    Device
	deviceSet bool
	threads   int
	session   SessionOptions
}

// comp returns the placement of component k, or records an error and
// returns a placement that is never used when k is unknown.
func (c *loadConfig) comp(k Component) *placement {
	if !k.valid() {
		c.errs = append(c.errs, fmt.Errorf("sd: unknown component %d (want %s)", int(k), componentList()))
		return &placement{}
	}
	if c.comps == nil {
		c.comps = make(map[Component]*placement)
	}
	p := c.comps[k]
	if p == nil {
		p = &placement{}
		c.comps[k] = p
	}
	return p
}

// auto reports whether component k was placed with Auto.
func (c *loadConfig) auto(k Component) bool {
	p := c.comps[k]
	return p != nil && p.deviceSet && p.device == Auto
}

// WithLibraryPath loads the ONNX Runtime shared library from path instead of
// $ONNXRUNTIME_SHARED_LIBRARY_PATH or the default locations.
func WithLibraryPath(path string) LoadOption {
	return func(c *loadConfig) { c.libraryPath = path }
}

// WithDevice runs component c on device d (default CPU). Each component can
// be placed on its own device, e.g. the UNet on CUDA and the text encoder on
// the CPU.
func WithDevice(c Component, d Device) LoadOption {
	return func(cfg *loadConfig) {
		p := cfg.comp(c)
		p.device, p.deviceSet = d, true
	}
}

// WithThreads sets the number of intra-op threads component c's session
// uses; 0 means ONNX Runtime's default (one per core).
func WithThreads(c Component, intraOp int) LoadOption {
	return func(cfg *loadConfig) { cfg.comp(c).threads = intraOp }
}

// WithSessionOptions sets ONNX Runtime's session settings for component c
// (see SessionOptions), replacing those of an earlier WithSessionOptions
// for c.
func WithSessionOptions(c Component, o SessionOptions) LoadOption {
	o.ProviderOptions = maps.Clone(o.ProviderOptions)
	return func(cfg *loadConfig) { cfg.comp(c).session = o }
}

// WithoutVAEEncoder skips the VAE encoder even when the folder has one:
// text-to-image needs no encoder, and this saves its memory and load time.
// Image-to-image requests are then refused.
func WithoutVAEEncoder() LoadOption {
	return func(c *loadConfig) { c.skipVAEEncoder = true }
}

// WithLogger makes Open report what it loads, and from where, to l, and
// the engine its internal errors. Without it (or with nil) nothing is
// logged.
func WithLogger(l *slog.Logger) LoadOption {
	return func(c *loadConfig) { c.logger = l }
}

// newConfig applies opts and validates the result, joining every problem
// into one error.
func newConfig(opts []Option) (*config, error) {
	c := &config{load: defaultLoadConfig()}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	if err := errors.Join(append(c.load.check(), c.engine.check()...)...); err != nil {
		return nil, err
	}
	return c, nil
}

// newLoadConfig is newConfig for LoadOptions alone.
func newLoadConfig(opts []LoadOption) (*loadConfig, error) {
	c := defaultLoadConfig()
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	if err := errors.Join(c.check()...); err != nil {
		return nil, err
	}
	return &c, nil
}

func defaultLoadConfig() loadConfig {
	return loadConfig{perf: perfConfig{rewrites: DefaultRewrites(), defaults: true}}
}

// check validates c and fills in the logger.
func (c *loadConfig) check() []error {
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	errs := slices.Clone(c.errs)
	for _, k := range slices.Sorted(maps.Keys(c.comps)) {
		p := c.comps[k]
		if p.deviceSet {
			if _, ok := providers[p.device]; !ok {
				errs = append(errs, fmt.Errorf("sd: %s: unknown device %q (want %s)", k, p.device, deviceList()))
			}
		}
		if p.threads < 0 {
			errs = append(errs, fmt.Errorf("sd: %s: negative thread count %d", k, p.threads))
		}
		s := p.session
		for _, f := range []struct {
			name string
			v    Switch
		}{{"MemoryPattern", s.MemoryPattern}, {"MemoryArena", s.MemoryArena}, {"Spinning", s.Spinning}} {
			if !f.v.valid() {
				errs = append(errs, fmt.Errorf("sd: %s: SessionOptions.%s is %d, want 0 (the default), On or Off", k, f.name, f.v))
			}
		}
	}
	errs = append(errs, c.checkStepCache()...)
	return append(errs, c.perf.check()...)
}

// sessionOptions returns the options component k is opened with: its
// placement, ONNX Runtime settings and rewrites.
func (c *loadConfig) sessionOptions(k Component) session.Options {
	o := session.Options{LibraryPath: c.libraryPath, Device: session.CPU, DisableMemoryPattern: k != TextEncoder,
		DisableMemoryArena: k == VAEDecoder || k == VAEEncoder,
		RewriteCache:       c.perf.cacheDir, Logger: c.logger.With("component", k.String())}
	if o.RewriteCache == "" {
		o.RewriteCache = filepath.Join(cachedir.Dir(), "rewritten")
	}
	if p := c.comps[k]; p != nil {
		if p.deviceSet {
			o.Device = providers[p.device]
		}
		s := p.session
		o.ProviderOptions = maps.Clone(s.ProviderOptions)
		o.Threads = p.threads
		o.DisableMemoryPattern = !s.MemoryPattern.or(!o.DisableMemoryPattern)
		o.DisableMemoryArena = !s.MemoryArena.or(!o.DisableMemoryArena)
		o.DisableSpinning = !s.Spinning.or(true)
	}
	for _, r := range c.perf.rewrites {
		// ONNX Runtime has a MultiHeadAttention kernel on the CPU and CUDA
		if r == RewriteMHA && c.perf.defaults && o.Device != session.CPU && o.Device != session.CUDA {
			continue
		}
		o.Rewrites = append(o.Rewrites, string(r))
	}
	return o
}

func componentList() string {
	var s []string
	for _, c := range components {
		s = append(s, c.String())
	}
	return strings.Join(s, ", ")
}

func deviceList() string {
	var s []string
	for d := range providers {
		s = append(s, string(d))
	}
	slices.Sort(s)
	return strings.Join(s, ", ")
}
