package server

import (
	"fmt"
	"slices"
	"strings"
)

// AUTOMATIC1111's vocabulary: its sampler and schedule-type names, mapped
// to the engine's scheduler names (sd.Schedulers). Only what the engine
// really runs is listed: /sdapi/v1/samplers and /sdapi/v1/schedulers tell
// a front-end the truth, and a request for anything else is refused.

// a1111Sampler is one of A1111's samplers the engine runs.
type a1111Sampler struct {
	name    string         // A1111's name ("DPM++ 2M")
	aliases []string       // A1111's aliases, then the diffusers class names that run it
	options map[string]any // A1111's sampler options, as /sdapi/v1/samplers gives them
	plain   string         // the engine's name for its own schedule (A1111's Automatic)
	karras  string         // the engine's name with Karras sigmas, or ""
	// autoKarras: A1111 ≥ 1.9 runs this sampler with the Karras schedule
	// when the schedule type is Automatic (its options say so).
	autoKarras bool
}

var a1111Samplers = []a1111Sampler{
	{name: "DPM++ 2M", aliases: []string{"k_dpmpp_2m", "DPMSolverMultistepScheduler"}, options: map[string]any{"scheduler": "karras"}, plain: "DPM++ 2M", karras: "DPM++ 2M Karras", autoKarras: true},
	{name: "DPM++ SDE", aliases: []string{"k_dpmpp_sde", "DPMSolverSinglestepScheduler"}, options: map[string]any{"scheduler": "karras", "second_order": true, "brownian_noise": true}, plain: "DPM++ SDE", karras: "DPM++ SDE Karras", autoKarras: true},
	{name: "DPM++ 2M SDE", aliases: []string{"k_dpmpp_2m_sde"}, options: map[string]any{"brownian_noise": true}, plain: "DPM++ 2M SDE", karras: "DPM++ 2M SDE Karras"},
	{name: "Euler a", aliases: []string{"k_euler_a", "k_euler_ancestral", "EulerAncestralDiscreteScheduler"}, options: map[string]any{"uses_ensd": true}, plain: "Euler a"},
	{name: "Euler", aliases: []string{"k_euler", "EulerDiscreteScheduler"}, options: map[string]any{}, plain: "Euler", karras: "Euler Karras"},
	{name: "LMS", aliases: []string{"k_lms", "LMSDiscreteScheduler"}, options: map[string]any{}, plain: "LMS", karras: "LMS Karras"},
	{name: "Heun", aliases: []string{"k_heun", "HeunDiscreteScheduler"}, options: map[string]any{"second_order": true}, plain: "Heun", karras: "Heun Karras"},
	{name: "DPM2", aliases: []string{"k_dpm_2", "KDPM2DiscreteScheduler"}, options: map[string]any{"scheduler": "karras", "discard_next_to_last_sigma": true, "second_order": true}, plain: "DPM2", karras: "DPM2 Karras", autoKarras: true},
	{name: "DPM2 a", aliases: []string{"k_dpm_2_a", "KDPM2AncestralDiscreteScheduler"}, options: map[string]any{"scheduler": "karras", "discard_next_to_last_sigma": true, "uses_ensd": true, "second_order": true}, plain: "DPM2 a", karras: "DPM2 a Karras", autoKarras: true},
	{name: "DDIM", aliases: []string{"ddim", "DDIMScheduler"}, options: map[string]any{}, plain: "DDIM"},
	{name: "PLMS", aliases: []string{"plms", "PNDMScheduler", "PNDM"}, options: map[string]any{}, plain: "PLMS"},
	{name: "UniPC", aliases: []string{"unipc", "UniPCMultistepScheduler"}, options: map[string]any{}, plain: "UniPC"},
	{name: "LCM", aliases: []string{"k_lcm", "LCMScheduler"}, options: map[string]any{}, plain: "LCM"},
	// not A1111's, but the engine's: listed under their own names
	{name: "DDPM", aliases: []string{"DDPMScheduler"}, options: map[string]any{}, plain: "DDPM"},
	{name: "DEIS", aliases: []string{"DEISMultistepScheduler"}, options: map[string]any{}, plain: "DEIS"},
	{name: "DPMSolverSDEScheduler", aliases: []string{}, options: map[string]any{"brownian_noise": true}, plain: "DPMSolverSDEScheduler"},
}

// a1111Schedule is one of A1111's schedule types (A1111 ≥ 1.9's
// "scheduler" field and "Schedule type" infotext).
type a1111Schedule struct {
	name, label string
	aliases     []string
	rho         *float64
	inner       bool
}

var karrasRho = 7.0

// a1111Schedules are the schedule types the engine runs. A1111 has more
// (Uniform, Exponential, Polyexponential, SGM Uniform, KL Optimal, Align
// Your Steps, Simple, Normal, DDIM, Beta): the engine's schedulers do not
// compute those sigmas, so a request for one is refused.
var a1111Schedules = []a1111Schedule{
	{name: "automatic", label: "Automatic", aliases: []string{}},
	{name: "karras", label: "Karras", aliases: []string{}, rho: &karrasRho},
}

// a1111UnsupportedSchedules are A1111's other schedule types, named in the
// refusal.
var a1111UnsupportedSchedules = []string{"Uniform", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal", "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"}

// findSampler returns the sampler a name or alias names (case-insensitive,
// as A1111's map is lower-cased), and the schedule a legacy name such as
// "DPM++ 2M Karras" carries.
func findSampler(name string) (a1111Sampler, string, bool) {
	for _, s := range a1111Samplers {
		if strings.EqualFold(s.name, name) || slices.ContainsFunc(s.aliases, func(a string) bool { return strings.EqualFold(a, name) }) {
			return s, "", true
		}
		if s.karras != "" && strings.EqualFold(s.karras, name) {
			return s, "Karras", true
		}
	}
	return a1111Sampler{}, "", false
}

// findSchedule returns the schedule type a name, label or alias names.
func findSchedule(name string) (a1111Schedule, bool) {
	for _, s := range a1111Schedules {
		if strings.EqualFold(s.name, name) || strings.EqualFold(s.label, name) || slices.ContainsFunc(s.aliases, func(a string) bool { return strings.EqualFold(a, name) }) {
			return s, true
		}
	}
	return a1111Schedule{}, false
}

// samplerChoice is a resolved sampler: the engine's name for it and
// A1111's names for the infotext.
type samplerChoice struct {
	engine   string // the sd scheduler name; "" = the model's own
	sampler  string // A1111's sampler name
	schedule string // A1111's schedule-type label
}

// resolveSampler maps A1111's sampler_name (or sampler_index, its
// fallback) and scheduler to the engine's scheduler. An empty sampler is
// the model's own scheduler; names are checked against what the engine
// runs.
func resolveSampler(samplerField, sampler, schedule string) (samplerChoice, error) {
	if sampler == "" {
		if schedule != "" && !strings.EqualFold(schedule, "automatic") {
			return samplerChoice{}, badRequest("scheduler", "scheduler: %q needs a sampler_name (the model's own scheduler has its own schedule)", schedule)
		}
		return samplerChoice{}, nil
	}
	s, legacy, ok := findSampler(sampler)
	if !ok {
		return samplerChoice{}, badRequest(samplerField, "%s: unknown sampler %q (GET /sdapi/v1/samplers lists the ones this server runs)", samplerField, sampler)
	}
	label := "Automatic"
	if schedule != "" {
		sc, ok := findSchedule(schedule)
		if !ok {
			if slices.ContainsFunc(a1111UnsupportedSchedules, func(a string) bool { return strings.EqualFold(a, schedule) }) {
				return samplerChoice{}, badRequest("scheduler", "scheduler: the %s schedule is not supported by this server's schedulers (it runs Automatic and Karras; GET /sdapi/v1/schedulers)", schedule)
			}
			return samplerChoice{}, badRequest("scheduler", "scheduler: unknown schedule type %q (GET /sdapi/v1/schedulers lists Automatic and Karras)", schedule)
		}
		label = sc.label
	}
	if legacy != "" && label == "Automatic" {
		label = legacy
	}
	if label == "Automatic" && s.autoKarras && s.karras != "" {
		label = "Karras" // what A1111 runs for Automatic with this sampler
	}
	c := samplerChoice{engine: s.plain, sampler: s.name, schedule: label}
	if label == "Karras" {
		if s.karras == "" {
			return samplerChoice{}, badRequest("scheduler", "scheduler: %s has no Karras schedule in this server's schedulers (use Automatic)", s.name)
		}
		c.engine = s.karras
	}
	if !slices.Contains(schedulers(), c.engine) {
		return samplerChoice{}, badRequest(samplerField, "%s: %q is not available in this build", samplerField, sampler)
	}
	return c, nil
}

// a1111Names returns A1111's sampler and schedule-type names for an engine
// scheduler name (a resolved Request.Scheduler: a diffusers class or an
// A1111 name).
func a1111Names(engine string) (sampler, schedule string) {
	if engine == "" {
		return "", ""
	}
	for _, s := range a1111Samplers {
		if s.karras != "" && s.karras == engine {
			return s.name, "Karras"
		}
	}
	if s, legacy, ok := findSampler(engine); ok {
		if legacy != "" {
			return s.name, legacy
		}
		return s.name, "Automatic"
	}
	return engine, "Automatic"
}

func (c samplerChoice) String() string {
	return fmt.Sprintf("%s (%s)", c.sampler, c.schedule)
}

// a1111SamplerNames lists A1111's names of the samplers the engine runs.
func a1111SamplerNames() []string {
	have := schedulers()
	var out []string
	for _, x := range a1111Samplers {
		if slices.Contains(have, x.plain) {
			out = append(out, x.name)
		}
	}
	return out
}
