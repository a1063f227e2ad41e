package sd

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
)

// Component names one ONNX model of a Stable Diffusion folder, for
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
// library was built; an unavailable one makes OpenFolder fail with an error
// that wraps *ort.ProviderError. Provider settings such as "device_id" go
// through WithProviderOptions.
type Device string

// The devices OpenFolder accepts.
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

// providers maps each Device to the internal/ort provider.
var providers = map[Device]ort.Provider{
	CPU:      ort.CPU,
	CUDA:     ort.CUDA,
	TensorRT: ort.TensorRT,
	CoreML:   ort.CoreML,
	DirectML: ort.DirectML,
	OpenVINO: ort.OpenVINO,
	WebGPU:   ort.WebGPU,
	Auto:     ort.WebGPU,
}

// auto reports whether component k was placed with Auto.
func (c *config) auto(k Component) bool {
	p := c.comps[k]
	return p != nil && p.deviceSet && p.device == Auto
}

// Option configures OpenFolder. Options only record values; OpenFolder
// checks them all at once and reports every invalid one. An Option may be
// reused and shared between goroutines.
type Option func(*config)

// placement is what the options say about one component.
type placement struct {
	device          Device
	deviceSet       bool
	providerOptions map[string]string
	threads         int
	pattern         int // ONNX Runtime's memory pattern planner: 0 default, 1 on, -1 off
	arena           int // ONNX Runtime's CPU memory arena: 0 default, 1 on, -1 off
}

type config struct {
	pipe           pipeline.Options // engine settings, for Open
	mode           Mode
	libraryPath    string
	comps          map[Component]*placement
	skipVAEEncoder bool
	noSpin         bool
	logger         *slog.Logger
	perf           perfConfig       // rewrites and warm-up (perf.go)
	ckpt           checkpointConfig // single-file checkpoints (checkpoint.go)
}

func (c *config) comp(k Component) *placement {
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

// WithLibraryPath loads the ONNX Runtime shared library from path instead of
// $ONNXRUNTIME_SHARED_LIBRARY_PATH or the default locations.
func WithLibraryPath(path string) Option {
	return func(c *config) { c.libraryPath = path }
}

// WithDevice runs component c on device d (default CPU). Each component can
// be placed on its own device, e.g. the UNet on CUDA and the text encoder on
// the CPU.
func WithDevice(c Component, d Device) Option {
	return func(cfg *config) {
		p := cfg.comp(c)
		p.device, p.deviceSet = d, true
	}
}

// WithProviderOptions passes opts (e.g. {"device_id": "1"}) to the execution
// provider of component c. The map is copied.
func WithProviderOptions(c Component, opts map[string]string) Option {
	opts = maps.Clone(opts)
	return func(cfg *config) { cfg.comp(c).providerOptions = opts }
}

// WithThreads sets the number of intra-op threads component c's session
// uses; 0 means ONNX Runtime's default (one per core).
func WithThreads(c Component, intraOp int) Option {
	return func(cfg *config) { cfg.comp(c).threads = intraOp }
}

// WithMemoryPattern turns ONNX Runtime's memory pattern planner on or off
// for component c's session. The planner allocates a call's intermediate
// tensors as one planned block; off, they are allocated one by one from the
// memory arena, which keeps less memory at once. By default it is off for
// the UNet and the VAE, where at 512×512 it holds 0.25 GiB (UNet) and
// 0.9 GiB (VAE decoder) more and brings no speed (see BENCHMARKS.md), and
// on for the text encoder.
func WithMemoryPattern(c Component, on bool) Option {
	return func(cfg *config) { cfg.comp(c).pattern = tristate(on) }
}

// WithMemoryArena turns ONNX Runtime's CPU memory arena on or off for
// component c's session (on by default). The arena keeps the largest
// amount of memory a call has needed for the next calls; off, a call's
// memory goes back to the system when it ends, so that sessions that run
// one after the other do not each hold their peak.
func WithMemoryArena(c Component, on bool) Option {
	return func(cfg *config) { cfg.comp(c).arena = tristate(on) }
}

// tristate is a placement setting set on (1) or off (-1); 0 is unset.
func tristate(on bool) int {
	if on {
		return 1
	}
	return -1
}

// WithSpinning sets whether the idle threads of every session's pool spin
// for more work before they sleep (ONNX Runtime's allow_spinning; on by
// default). Spinning lowers the latency of a lone request; turning it off
// leaves the cores to other sessions and processes running at the same
// time.
func WithSpinning(allow bool) Option {
	return func(c *config) { c.noSpin = !allow }
}

// WithoutVAEEncoder skips the VAE encoder even when the folder has one:
// text-to-image needs no encoder, and this saves its memory and load time.
// Folder.VAEEncoder is then nil.
func WithoutVAEEncoder() Option {
	return func(c *config) { c.skipVAEEncoder = true }
}

// WithLogger makes OpenFolder report what it loads, and from where, to l.
// Without it (or with nil) nothing is logged.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// newConfig applies opts and validates the result, joining every problem
// into one error.
func newConfig(opts []Option) (*config, error) {
	c := &config{perf: perfConfig{rewrites: DefaultRewrites(), defaults: true}}
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	var errs []error
	keys := slices.Sorted(maps.Keys(c.comps))
	for _, k := range keys {
		p := c.comps[k]
		if !k.valid() {
			errs = append(errs, fmt.Errorf("sd: unknown component %d (want %s)", int(k), componentList()))
			continue
		}
		if p.deviceSet {
			if _, ok := providers[p.device]; !ok {
				errs = append(errs, fmt.Errorf("sd: %s: unknown device %q (want %s)", k, p.device, deviceList()))
			}
		}
		if p.threads < 0 {
			errs = append(errs, fmt.Errorf("sd: %s: negative thread count %d", k, p.threads))
		}
	}
	errs = append(errs, c.checkEngine()...)
	errs = append(errs, c.perf.check()...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// ortOptions returns the session options for component k.
func (c *config) ortOptions(k Component) ort.Options {
	o := ort.Options{LibraryPath: c.libraryPath, Provider: ort.CPU, NoSpinning: c.noSpin,
		DisableMemPattern: k != TextEncoder}
	if p := c.comps[k]; p != nil {
		if p.deviceSet {
			o.Provider = providers[p.device]
		}
		o.ProviderOptions = maps.Clone(p.providerOptions)
		o.IntraOpThreads = p.threads
		if p.pattern != 0 {
			o.DisableMemPattern = p.pattern < 0
		}
		if p.arena != 0 {
			o.DisableMemArena = p.arena < 0
		}
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
