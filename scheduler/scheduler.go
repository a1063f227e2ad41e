package scheduler

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// ErrUnknownScheduler is returned by New for a name that is neither a
// supported diffusers class nor a known sampler name.
var ErrUnknownScheduler = errors.New("scheduler: unknown scheduler")

// ErrOptions is wrapped by every error about invalid Options.
var ErrOptions = errors.New("scheduler: invalid options")

// ErrStepOrder is returned by Step when it is not called with consecutive
// indices starting at 0, or past the end of the schedule.
var ErrStepOrder = errors.New("scheduler: step out of order")

// Noise is a source of standard normal float32 samples. Stochastic schedulers
// call Randn once per noise tensor they draw (one full sample each time), in
// the order diffusers draws them. Implementations need not be safe for
// concurrent use; a Scheduler uses its Noise from one goroutine.
type Noise interface {
	Randn(dst []float32)
}

// Img2ImgLogic selects how an img2img strength truncates the schedule.
type Img2ImgLogic int

const (
	// Modern is StableDiffusionImg2ImgPipeline: init_timestep =
	// min(int(N*strength), N), t_start = N-init_timestep, the loop runs over
	// timesteps[t_start*order:] and noise is added at its first timestep.
	Modern Img2ImgLogic = iota
	// LegacyONNX is OnnxStableDiffusionImg2ImgPipeline: init_timestep =
	// min(int(N*strength)+steps_offset, N), noise is added at
	// timesteps[-init_timestep] and the loop runs over
	// timesteps[N-init_timestep+steps_offset:].
	LegacyONNX
)

// String returns the name of the diffusers pipeline the logic follows.
func (l Img2ImgLogic) String() string {
	switch l {
	case Modern:
		return "StableDiffusionImg2ImgPipeline"
	case LegacyONNX:
		return "OnnxStableDiffusionImg2ImgPipeline"
	}
	return fmt.Sprintf("Img2ImgLogic(%d)", int(l))
}

// Options configures one scheduler instance. The zero value of each field
// means the default; Steps and Size are required.
type Options struct {
	Steps     int            // num_inference_steps, in [1, min(1000, num_train_timesteps)]
	Eta       float64        // DDIM eta (>= 0)
	Strength  float64        // img2img strength in (0,1]; 0 means txt2img (full schedule)
	Img2Img   Img2ImgLogic   // truncation logic used when Strength > 0
	Noise     Noise          // required by stochastic schedulers
	Size      int            // number of float32 elements of one sample, e.g. 4*64*64
	Overrides map[string]any // config overrides on top of cfg, as from_config(**overrides)
}

// MaxSteps is the largest number of inference steps New accepts.
const MaxSteps = 1000

// Scheduler is one denoising run. It is created per request by New and is
// not safe for concurrent use. The loop is:
//
//	latents = noise * InitNoiseSigma() (or AddNoise for img2img)
//	for i, t := range s.Timesteps() {
//		s.ScaleModelInput(x, latents, i)
//		eps := model(x, t)
//		s.Step(eps, latents, i)
//	}
type Scheduler interface {
	// Timesteps returns the timestep handed to the model for each model
	// evaluation, in order, after img2img truncation. The caller must not
	// modify the slice.
	Timesteps() []float64
	// InitNoiseSigma returns the float32 factor (as float64) by which the
	// initial standard normal noise is multiplied for txt2img.
	InitNoiseSigma() float64
	// ScaleModelInput writes the model input for evaluation i into dst.
	// dst and sample may be the same slice. Second-order samplers (Heun,
	// KDPM2, DPM++ SDE) scale by their current stage, so call it for
	// evaluation i after Step(i-1) and before Step(i).
	ScaleModelInput(dst, sample []float32, i int)
	// Step advances sample in place to the previous (less noisy) sample
	// using the model output of evaluation i. It must be called with
	// i = 0, 1, 2, ... (ErrStepOrder otherwise) and allocates nothing. It
	// panics if a slice's length is not Options.Size.
	Step(modelOutput, sample []float32, i int) error
	// AddNoise writes to dst the img2img initial latents: original noised
	// to the start of the truncated schedule. dst may alias original.
	AddNoise(dst, original, noise []float32)
}

// alias maps an A1111 sampler name to a diffusers class and overrides.
type alias struct {
	class     string
	overrides map[string]any
}

var aliases = map[string]alias{
	"PLMS":                {"PNDMScheduler", nil},
	"PNDM":                {"PNDMScheduler", nil},
	"DDIM":                {"DDIMScheduler", nil},
	"DDPM":                {"DDPMScheduler", nil},
	"LMS":                 {"LMSDiscreteScheduler", nil},
	"LMS Karras":          {"LMSDiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
	"Euler":               {"EulerDiscreteScheduler", nil},
	"Euler Karras":        {"EulerDiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
	"Euler a":             {"EulerAncestralDiscreteScheduler", nil},
	"Heun":                {"HeunDiscreteScheduler", nil},
	"Heun Karras":         {"HeunDiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
	"DPM2":                {"KDPM2DiscreteScheduler", nil},
	"DPM2 Karras":         {"KDPM2DiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
	"DPM2 a":              {"KDPM2AncestralDiscreteScheduler", nil},
	"DPM2 a Karras":       {"KDPM2AncestralDiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
	"DPM++ 2M":            {"DPMSolverMultistepScheduler", nil},
	"DPM++ 2M Karras":     {"DPMSolverMultistepScheduler", map[string]any{"use_karras_sigmas": true}},
	"DPM++ 2M SDE":        {"DPMSolverMultistepScheduler", map[string]any{"algorithm_type": "sde-dpmsolver++"}},
	"DPM++ 2M SDE Karras": {"DPMSolverMultistepScheduler", map[string]any{"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": true}},
	"DPM++ SDE":           {"DPMSolverSinglestepScheduler", nil},
	"DPM++ SDE Karras":    {"DPMSolverSinglestepScheduler", map[string]any{"use_karras_sigmas": true}},
	"UniPC":               {"UniPCMultistepScheduler", nil},
	"DEIS":                {"DEISMultistepScheduler", nil},
	"LCM":                 {"LCMScheduler", nil},
}

// Names returns every name New accepts: the diffusers class names and the
// A1111 sampler names, sorted. It is safe for concurrent use.
func Names() []string {
	var names []string
	for c := range constructors {
		names = append(names, c)
	}
	for a, al := range aliases {
		if _, ok := constructors[al.class]; ok {
			names = append(names, a)
		}
	}
	sort.Strings(names)
	return names
}

// ClassOf returns the diffusers class name that New uses for name. It is
// safe for concurrent use.
func ClassOf(name string) (string, error) {
	if _, ok := constructors[name]; ok {
		return name, nil
	}
	if a, ok := aliases[name]; ok {
		if _, ok := constructors[a.class]; ok {
			return a.class, nil
		}
	}
	return "", fmt.Errorf("%w: %q", ErrUnknownScheduler, name)
}

// constructor builds a scheduler from resolved params, filling base.full
// (the model evaluations of the whole schedule) and base.order.
type constructor func(b *base) (Scheduler, error)

// constructors maps each supported diffusers class to its constructor.
var constructors = map[string]constructor{
	"PNDMScheduler":                   newPNDM,
	"DDIMScheduler":                   newDDIM,
	"EulerDiscreteScheduler":          newEuler,
	"EulerAncestralDiscreteScheduler": newEulerAncestral,
	"DPMSolverMultistepScheduler":     newDPMMultistep,
	"LMSDiscreteScheduler":            newLMS,
	"HeunDiscreteScheduler":           newHeun,
	"KDPM2DiscreteScheduler":          newKDPM2,
	"KDPM2AncestralDiscreteScheduler": newKDPM2Ancestral,
	"DPMSolverSDEScheduler":           newDPMSDE,
	"DDPMScheduler":                   newDDPM,
	"LCMScheduler":                    newLCM,
	"UniPCMultistepScheduler":         newUniPC,
	"DEISMultistepScheduler":          newDEIS,
	"DPMSolverSinglestepScheduler":    newDPMSinglestep,
}

// stochastic lists the classes (and algorithm types) that draw noise.
func needsNoise(p *params, eta float64) bool {
	switch p.class {
	case "EulerAncestralDiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DDPMScheduler",
		"DPMSolverSDEScheduler", "LCMScheduler":
		return true
	case "DDIMScheduler":
		return eta > 0
	case "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler":
		return p.algorithmType == "sde-dpmsolver++" || p.algorithmType == "sde-dpmsolver"
	}
	return false
}

// New creates the per-request state of the scheduler called name (a diffusers
// class name or an A1111 sampler name, see Names) from a shared Config. The
// result is not safe for concurrent use; create one per request.
func New(name string, cfg *Config, o Options) (Scheduler, error) {
	class, err := ClassOf(name)
	if err != nil {
		return nil, err
	}
	var ovs []map[string]any
	if a, ok := aliases[name]; ok && a.overrides != nil {
		ovs = append(ovs, a.overrides)
	}
	if o.Overrides != nil {
		ovs = append(ovs, o.Overrides)
	}
	p, err := resolve(class, cfg, ovs...)
	if err != nil {
		return nil, err
	}
	if o.Steps < 1 || o.Steps > MaxSteps || o.Steps > p.numTrainTimesteps {
		return nil, fmt.Errorf("%w: steps %d not in [1, %d]", ErrOptions, o.Steps, min(MaxSteps, p.numTrainTimesteps))
	}
	if !(o.Strength >= 0 && o.Strength <= 1) {
		return nil, fmt.Errorf("%w: strength %v not in (0, 1]", ErrOptions, o.Strength)
	}
	if o.Img2Img != Modern && o.Img2Img != LegacyONNX {
		return nil, fmt.Errorf("%w: unknown img2img logic %d", ErrOptions, int(o.Img2Img))
	}
	if !(o.Eta >= 0 && o.Eta <= 100) {
		return nil, fmt.Errorf("%w: eta %v must be >= 0", ErrOptions, o.Eta)
	}
	if o.Size < 1 {
		return nil, fmt.Errorf("%w: size %d must be positive", ErrOptions, o.Size)
	}
	if o.Noise == nil && needsNoise(p, o.Eta) {
		return nil, fmt.Errorf("%w: %s needs a Noise source", ErrOptions, class)
	}
	b := &base{p: p, ts: newTrainSchedule(p), n: o.Steps, size: o.Size, noise: o.Noise, eta: o.Eta, order: 1}
	s, err := constructors[class](b)
	if err != nil {
		return nil, err
	}
	for _, t := range b.full {
		if p.timestepType == "continuous" {
			break // EDM-style 0.25*log(sigma) timesteps
		}
		if !(t >= 0 && t <= float64(p.numTrainTimesteps-1)) {
			return nil, fmt.Errorf("%w: %d steps give timestep %v outside [0, %d] (steps_offset %d)",
				ErrOptions, o.Steps, t, p.numTrainTimesteps-1, p.stepsOffset)
		}
	}
	if err := b.truncate(o); err != nil {
		return nil, err
	}
	return s, nil
}

// base holds what every scheduler shares.
type base struct {
	p     *params
	ts    trainSchedule
	n     int // num_inference_steps
	size  int
	noise Noise
	eta   float64
	order int // scheduler.order (model evaluations per step for img2img)

	full      []float64 // timesteps of every model evaluation of the full schedule
	begin     int       // first evaluation after img2img truncation
	stepStart int       // internal step index of the first evaluation
	noiseT    float64   // timestep at which AddNoise noises
	noiseIdx  int       // internal step index at which AddNoise noises
	next      int       // next expected Step index
}

// Timesteps implements Scheduler.
func (b *base) Timesteps() []float64 { return b.full[b.begin:] }

// indexForTimestep is diffusers' index_for_timestep: the position of t in
// the schedule, the second one when t occurs more than once.
func (b *base) indexForTimestep(t float64) int {
	first, count := -1, 0
	for i, v := range b.full {
		if v == t {
			count++
			if count == 1 {
				first = i
			}
			if count == 2 {
				return i
			}
		}
	}
	return max(first, 0)
}

// truncate applies the img2img strength.
func (b *base) truncate(o Options) error {
	N := b.n
	if o.Strength == 0 {
		b.begin, b.stepStart, b.noiseIdx = 0, 0, 0
		b.noiseT = b.full[0]
		return nil
	}
	switch o.Img2Img {
	case Modern:
		initT := min(int(float64(N)*o.Strength), N)
		tStart := max(N-initT, 0)
		b.begin = tStart * b.order
		if b.begin >= len(b.full) {
			return fmt.Errorf("%w: strength %v leaves no denoising step", ErrOptions, o.Strength)
		}
		b.stepStart = b.begin
		b.noiseIdx = b.begin
		b.noiseT = b.full[b.begin]
	case LegacyONNX:
		off := b.p.stepsOffset
		initT := min(int(float64(N)*o.Strength)+off, N)
		if initT < 1 {
			return fmt.Errorf("%w: strength %v leaves no denoising step", ErrOptions, o.Strength)
		}
		b.noiseT = b.full[len(b.full)-initT]
		b.noiseIdx = b.indexForTimestep(b.noiseT)
		b.begin = max(N-initT+off, 0)
		if b.begin >= len(b.full) {
			return fmt.Errorf("%w: strength %v leaves no denoising step", ErrOptions, o.Strength)
		}
		b.stepStart = b.indexForTimestep(b.full[b.begin])
	}
	return nil
}

// checkStep validates the Step index and buffer lengths.
func (b *base) checkStep(modelOutput, sample []float32, i int) error {
	if i != b.next || b.begin+i >= len(b.full) {
		return fmt.Errorf("%w: got %d, want %d of %d", ErrStepOrder, i, b.next, len(b.full)-b.begin)
	}
	if len(modelOutput) != b.size || len(sample) != b.size {
		panic(fmt.Sprintf("scheduler: buffer length %d/%d, want %d", len(modelOutput), len(sample), b.size))
	}
	b.next++
	return nil
}

// alphaBase is the base of the alphas_cumprod schedulers (DDIM, DDPM,
// LCM, PNDM): no initial noise scaling, no input scaling, and
// SchedulerMixin's add_noise.
type alphaBase struct{ *base }

// InitNoiseSigma implements Scheduler.
func (alphaBase) InitNoiseSigma() float64 { return 1 }

// ScaleModelInput implements Scheduler; these schedulers do not scale.
func (alphaBase) ScaleModelInput(dst, sample []float32, i int) { copyScale(dst, sample) }

// AddNoise implements Scheduler.
func (s alphaBase) AddNoise(dst, original, noise []float32) { s.alphasAddNoise(dst, original, noise) }

// alphasAddNoise is SchedulerMixin.add_noise for alphas_cumprod based
// schedulers: sqrt(ac[t])*x + sqrt(1-ac[t])*noise in float32.
func (b *base) alphasAddNoise(dst, original, noise []float32) {
	a := b.ts.alphasCumprod[int(b.noiseT)]
	sa := sqrt32(a)
	sb := sqrt32(1 - a)
	for j := range dst {
		dst[j] = float32(sa*original[j]) + float32(sb*noise[j])
	}
}

// copyScale is the identity ScaleModelInput.
func copyScale(dst, sample []float32) {
	copy(dst, sample)
}

// Check reports whether cfg names a scheduler class this package runs
// ("_class_name") with settings it accepts, by building that scheduler
// once: what New would refuse at every request is refused here, when a
// model is opened.
func Check(cfg *Config) error {
	class := cfg.ClassName()
	if class == "" {
		return &ConfigError{Field: "_class_name", Reason: "missing: the file must name its scheduler class"}
	}
	if _, err := ClassOf(class); err != nil {
		return fmt.Errorf("%w (_class_name; this library runs %s)", err, strings.Join(classNames(), ", "))
	}
	if _, err := New(class, cfg, Options{Steps: 1, Size: 1, Noise: zeroNoise{}}); err != nil {
		return err
	}
	return nil
}

// classNames returns the diffusers classes New runs, sorted.
func classNames() []string {
	var n []string
	for c := range constructors {
		n = append(n, c)
	}
	sort.Strings(n)
	return n
}

// zeroNoise is the Noise of Check's trial scheduler, which never steps.
type zeroNoise struct{}

func (zeroNoise) Randn(dst []float32) { clear(dst) }
