package main

import (
	"cmp"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/rng"
	"github.com/sdpipe/sdpipe/sd"
)

// Mode is a way of running the request stream.
type Mode string

// The modes Run measures.
const (
	// Sequential is the plain loop on the folder's components (text
	// encoder, UNet, VAE decoder, scheduler), one request after another,
	// every model call on all cores. The baseline.
	Sequential Mode = "sequential"
	// Pipelined is the engine with sd.Throughput's settings: two denoise
	// workers whose UNet session has NumCPU/2 intra-op threads, one encode
	// and one decode worker on all cores, Concurrency requests in flight.
	Pipelined Mode = "pipelined"
	// PipelinedFull is the engine with sd.Latency's settings (one worker a
	// stage, every session on all cores) but Concurrency requests in
	// flight, so encoding and decoding overlap denoising.
	PipelinedFull Mode = "pipelined-full"
	// Batched is the engine with one denoise worker on all cores and
	// dynamic batching of up to MaxBatch requests a UNet call.
	Batched Mode = "batched"
)

// AllModes lists the stream modes in the order Run measures them.
var AllModes = []Mode{Sequential, Pipelined, Batched, PipelinedFull}

// ParseMode returns the Mode named s.
func ParseMode(s string) (Mode, error) {
	for _, m := range AllModes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("bench: unknown mode %q (want one of %v)", s, AllModes)
}

// DefaultPrompts are the prompts the stream cycles through.
var DefaultPrompts = []string{
	"a lighthouse at dusk, oil painting",
	"a red fox in the snow, photograph, detailed",
	"an astronaut riding a horse on mars",
	"a bowl of ramen, studio lighting, 8k",
}

// Config describes a benchmark run. The zero value of each field means its
// default.
type Config struct {
	// ModelDir is the model folder; "" means DefaultModel(Attention).
	ModelDir string
	// Attention picks the generated default model's attention form.
	Attention modelgen.AttentionForm
	// Arch is the architecture of the model, for MAC counts; a zero Name
	// means modelgen.SD15(). A model of another architecture gives wrong
	// GFLOP/s figures.
	Arch        modelgen.Config
	LibraryPath string // ONNX Runtime library, as sd.WithLibraryPath

	Requests    int     // N, the requests of a stream; 0 means 8
	Concurrency int     // C, requests in flight at once in the engine modes; 0 means Requests
	Width       int     // 0 means 256
	Height      int     // 0 means 256
	Steps       int     // 0 means 10
	Scheduler   string  // "" means the model's own
	Guidance    float64 // 0 means 7.5 (must be > 1: the sequential loop always guides)
	Prompts     []string
	Seed        int64 // request i uses Seed+i

	Modes  []Mode // stream modes; nil means AllModes
	Rounds int    // times each stream mode runs, order reversed every other round; 0 means 1
	// LatencyRepeats is the number of single-request pairs (sequential,
	// then the engine in latency mode, alternating which goes first); 0
	// means 3, negative skips them.
	LatencyRepeats int

	MaxBatch  int           // Batched mode's images a UNet call; 0 means 2
	BatchWait time.Duration // Batched mode's wait for a batch to fill; 0 means 1s

	MatMulN    int // matrix size of the peak measurement; 0 means 2048, negative skips it
	MatMulRuns int // 0 means 10
	// NoScaling skips the UNet call on half the cores (and the second UNet
	// session it needs, which the Pipelined mode opens anyway).
	NoScaling bool

	// Rewrites are the graph rewrites the model is opened with
	// (sd.WithRewrites); nil means the library's default, sd.DefaultRewrites.
	Rewrites []sd.Rewrite
	// NoRewrites opens the files as they are (sd.WithoutRewrites).
	NoRewrites bool
	// NoSpinning opens every session with sd.SessionOptions{Spinning: sd.Off}.
	NoSpinning bool
	// Devices places components on execution providers (sd.WithDevice);
	// a component not named runs on the CPU. With the UNet off the CPU,
	// the Pipelined mode and the scaling measurement (which split the
	// CPU's cores between two UNets) are refused.
	Devices map[sd.Component]sd.Device

	Logger *slog.Logger // progress; nil discards
	// OnProgress, when set, is called with the report so far after each
	// stream, from Run's goroutine, so that a long run cut short leaves
	// its figures. The report is Run's: read it before returning.
	OnProgress func(*Report)
}

func (c *Config) defaults() error {
	c.Requests = cmp.Or(c.Requests, 8)
	c.Concurrency = cmp.Or(c.Concurrency, c.Requests)
	c.Width = cmp.Or(c.Width, 256)
	c.Height = cmp.Or(c.Height, 256)
	c.Steps = cmp.Or(c.Steps, 10)
	c.Guidance = cmp.Or(c.Guidance, 7.5)
	if len(c.Prompts) == 0 {
		c.Prompts = DefaultPrompts
	}
	if c.Modes == nil {
		c.Modes = AllModes
	}
	c.Rounds = cmp.Or(c.Rounds, 1)
	c.LatencyRepeats = cmp.Or(c.LatencyRepeats, 3)
	c.MaxBatch = cmp.Or(c.MaxBatch, 2)
	c.BatchWait = cmp.Or(c.BatchWait, time.Second)
	c.MatMulN = cmp.Or(c.MatMulN, 2048)
	c.MatMulRuns = cmp.Or(c.MatMulRuns, 10)
	if c.Arch.Name == "" {
		c.Arch = modelgen.SD15()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.Requests < 1 || c.Concurrency < 1 || c.Rounds < 1:
		return fmt.Errorf("bench: requests, concurrency and rounds must be positive")
	case c.Width%8 != 0 || c.Height%8 != 0 || c.Width < 8 || c.Height < 8:
		return fmt.Errorf("bench: size %dx%d is not a positive multiple of 8", c.Width, c.Height)
	case c.Steps < 1:
		return fmt.Errorf("bench: steps must be positive")
	case !(c.Guidance > 1):
		return fmt.Errorf("bench: guidance %v must be above 1", c.Guidance)
	case c.MaxBatch < 1:
		return fmt.Errorf("bench: max batch must be positive")
	}
	for _, m := range c.Modes {
		if _, err := ParseMode(string(m)); err != nil {
			return err
		}
	}
	if d := c.Devices[sd.UNet]; d != "" && d != sd.CPU {
		if slices.Contains(c.Modes, Pipelined) || (c.MatMulN > 0 && !c.NoScaling) {
			return fmt.Errorf("bench: the UNet on %s: -modes pipelined and -scaling split the CPU's cores between two UNets; run with -modes sequential,pipelined-full,batched -scaling=false", d)
		}
	}
	return nil
}

// ParseDevices reads a -device list, "component=device,...", such as
// "unet=webgpu,vae_decoder=webgpu" (components by their folder names,
// devices as sd.Device spells them; "" gives nil).
func ParseDevices(s string) (map[sd.Component]sd.Device, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	names := map[string]sd.Component{}
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder, sd.VAEEncoder} {
		names[c.String()] = c
	}
	m := map[sd.Component]sd.Device{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		c, known := names[k]
		if !ok || !known || v == "" {
			return nil, fmt.Errorf("bench: -device %q: want component=device pairs, components %s", kv, strings.Join(slices.Sorted(maps.Keys(names)), ", "))
		}
		m[c] = sd.Device(v)
	}
	return m, nil
}

// request returns request i of the stream, resolved.
func (c *Config) request(i int) pipeline.Request {
	return pipeline.Request{
		Prompt:        c.Prompts[i%len(c.Prompts)],
		Width:         c.Width,
		Height:        c.Height,
		Steps:         c.Steps,
		GuidanceScale: new(c.Guidance),
		Scheduler:     c.Scheduler,
		Seed:          c.Seed + int64(i),
		Generator:     rng.KindNumpy,
	}
}
