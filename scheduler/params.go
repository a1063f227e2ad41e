package scheduler

import (
	"fmt"
	"math"
	"sort"
)

// params is the resolved configuration of one scheduler class: the class's
// __init__ defaults, overridden by the Config keys the class accepts, then by
// the name's and the caller's overrides.
type params struct {
	class string

	numTrainTimesteps int
	betaStart         float64
	betaEnd           float64
	betaSchedule      string
	trainedBetas      []float64
	predictionType    string
	timestepSpacing   string
	stepsOffset       int

	clipSample       bool
	clipSampleRange  float64
	setAlphaToOne    bool
	skipPRKSteps     bool
	thresholding     bool
	dynThreshRatio   float64
	sampleMaxValue   float64
	rescaleZeroSNR   bool
	varianceType     string // "" means null
	interpolation    string
	useKarras        bool
	timestepType     string
	finalSigmasType  string
	sigmaMin         float64 // NaN means null
	sigmaMax         float64 // NaN means null
	solverOrder      int
	algorithmType    string
	solverType       string
	lowerOrderFinal  bool
	eulerAtFinal     bool
	lambdaMinClipped float64
	predictX0        bool
	disableCorrector []int
	origInferSteps   int
	timestepScaling  float64
}

// classDefaults holds, per diffusers class, every __init__ argument the class
// accepts with its default value (diffusers 0.40.0). Keys outside a class's
// map are ignored for that class, as from_config does.
var classDefaults = map[string]map[string]any{
	"PNDMScheduler": withCommon(map[string]any{
		"skip_prk_steps": false, "set_alpha_to_one": false, "prediction_type": "epsilon",
		"timestep_spacing": "leading", "steps_offset": 0.0,
	}),
	"DDIMScheduler": withCommon(map[string]any{
		"clip_sample": true, "set_alpha_to_one": true, "steps_offset": 0.0, "prediction_type": "epsilon",
		"thresholding": false, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0,
		"sample_max_value": 1.0, "timestep_spacing": "leading", "rescale_betas_zero_snr": false,
	}),
	"DDPMScheduler": withCommon(map[string]any{
		"variance_type": "fixed_small", "clip_sample": true, "prediction_type": "epsilon",
		"thresholding": false, "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0,
		"sample_max_value": 1.0, "timestep_spacing": "leading", "steps_offset": 0.0,
		"rescale_betas_zero_snr": false,
	}),
	"LMSDiscreteScheduler": withCommon(map[string]any{
		"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
		"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0.0,
	}),
	"EulerDiscreteScheduler": withCommon(map[string]any{
		"prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": false,
		"use_exponential_sigmas": false, "use_beta_sigmas": false, "sigma_min": nil, "sigma_max": nil,
		"timestep_spacing": "linspace", "timestep_type": "discrete", "steps_offset": 0.0,
		"rescale_betas_zero_snr": false, "final_sigmas_type": "zero",
	}),
	"EulerAncestralDiscreteScheduler": withCommon(map[string]any{
		"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0.0,
		"rescale_betas_zero_snr": false,
	}),
	"HeunDiscreteScheduler": withCommon(map[string]any{
		"prediction_type": "epsilon", "use_karras_sigmas": false, "use_exponential_sigmas": false,
		"use_beta_sigmas": false, "clip_sample": false, "clip_sample_range": 1.0,
		"timestep_spacing": "linspace", "steps_offset": 0.0,
	}),
	"KDPM2DiscreteScheduler": withCommon(map[string]any{
		"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
		"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0.0,
	}),
	"KDPM2AncestralDiscreteScheduler": withCommon(map[string]any{
		"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
		"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0.0,
	}),
	"DPMSolverMultistepScheduler": withCommon(map[string]any{
		"solver_order": 2.0, "prediction_type": "epsilon", "thresholding": false,
		"dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
		"solver_type": "midpoint", "lower_order_final": true, "euler_at_final": false,
		"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
		"use_lu_lambdas": false, "use_flow_sigmas": false, "flow_shift": 1.0, "final_sigmas_type": "zero",
		"lambda_min_clipped": math.Inf(-1), "variance_type": nil, "timestep_spacing": "linspace",
		"steps_offset": 0.0, "rescale_betas_zero_snr": false, "use_dynamic_shifting": false,
		"time_shift_type": "exponential",
	}),
	"DPMSolverSinglestepScheduler": withCommon(map[string]any{
		"solver_order": 2.0, "prediction_type": "epsilon", "thresholding": false,
		"dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "dpmsolver++",
		"solver_type": "midpoint", "lower_order_final": true, "use_karras_sigmas": false,
		"use_exponential_sigmas": false, "use_beta_sigmas": false, "use_flow_sigmas": false,
		"flow_shift": 1.0, "final_sigmas_type": "zero", "lambda_min_clipped": math.Inf(-1),
		"variance_type": nil, "use_dynamic_shifting": false, "time_shift_type": "exponential",
	}),
	"DPMSolverSDEScheduler": withCommon(map[string]any{
		"prediction_type": "epsilon", "use_karras_sigmas": false, "use_exponential_sigmas": false,
		"use_beta_sigmas": false, "noise_sampler_seed": nil, "timestep_spacing": "linspace",
		"steps_offset": 0.0,
	}),
	"UniPCMultistepScheduler": withCommon(map[string]any{
		"solver_order": 2.0, "prediction_type": "epsilon", "thresholding": false,
		"dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "predict_x0": true,
		"solver_type": "bh2", "lower_order_final": true, "disable_corrector": []any{}, "solver_p": nil,
		"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
		"use_flow_sigmas": false, "flow_shift": 1.0, "timestep_spacing": "linspace", "steps_offset": 0.0,
		"final_sigmas_type": "zero", "rescale_betas_zero_snr": false, "use_dynamic_shifting": false,
		"time_shift_type": "exponential", "sigma_min": nil, "sigma_max": nil, "shift_terminal": nil,
	}),
	"DEISMultistepScheduler": withCommon(map[string]any{
		"solver_order": 2.0, "prediction_type": "epsilon", "thresholding": false,
		"dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0, "algorithm_type": "deis",
		"solver_type": "logrho", "lower_order_final": true, "use_karras_sigmas": false,
		"use_exponential_sigmas": false, "use_beta_sigmas": false, "use_flow_sigmas": false,
		"flow_shift": 1.0, "timestep_spacing": "linspace", "steps_offset": 0.0,
		"use_dynamic_shifting": false, "time_shift_type": "exponential",
	}),
	"LCMScheduler": withCommon(map[string]any{
		"original_inference_steps": 50.0, "clip_sample": false, "clip_sample_range": 1.0,
		"set_alpha_to_one": true, "steps_offset": 0.0, "prediction_type": "epsilon",
		"thresholding": false, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 1.0,
		"timestep_spacing": "leading", "timestep_scaling": 10.0, "rescale_betas_zero_snr": false,
	}),
}

func withCommon(m map[string]any) map[string]any {
	m["num_train_timesteps"] = 1000.0
	m["beta_start"] = 0.0001
	m["beta_end"] = 0.02
	m["beta_schedule"] = "linear"
	m["trained_betas"] = nil
	return m
}

// resolve builds the params of class from its defaults, the Config and the
// overrides (in that order of precedence, lowest first).
func resolve(class string, cfg *Config, overrides ...map[string]any) (*params, error) {
	defs, ok := classDefaults[class]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownScheduler, class)
	}
	vals := make(map[string]any, len(defs))
	for k, v := range defs {
		vals[k] = v
	}
	if cfg != nil {
		for k, v := range cfg.raw {
			if _, ok := defs[k]; ok {
				vals[k] = v
			}
		}
	}
	for _, ov := range overrides {
		keys := make([]string, 0, len(ov))
		for k := range ov {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if _, ok := defs[k]; !ok {
				return nil, &ConfigError{Field: k, Reason: "not a parameter of " + class}
			}
			v, err := normalize(k, ov[k])
			if err != nil {
				return nil, err
			}
			vals[k] = v
		}
	}
	p := &params{class: class}
	if err := p.set(vals); err != nil {
		return nil, err
	}
	return p, nil
}

// set fills p from vals and rejects values the implementation does not
// support.
func (p *params) set(vals map[string]any) error {
	f := func(k string) float64 { v, _ := vals[k].(float64); return v }
	fn := func(k string) float64 {
		if v, ok := vals[k].(float64); ok {
			return v
		}
		return math.NaN()
	}
	b := func(k string) bool { v, _ := vals[k].(bool); return v }
	s := func(k string) string { v, _ := vals[k].(string); return v }
	bad := func(k string, why string) error {
		return &ConfigError{Field: k, Reason: fmt.Sprintf("%v: %s", vals[k], why)}
	}
	oneOf := func(k string, allowed ...string) error {
		v := s(k)
		for _, a := range allowed {
			if v == a {
				return nil
			}
		}
		return bad(k, fmt.Sprintf("unsupported value (supported: %q)", allowed))
	}
	mustFalse := func(keys ...string) error {
		for _, k := range keys {
			if b(k) {
				return bad(k, "not supported")
			}
		}
		return nil
	}

	p.numTrainTimesteps = int(f("num_train_timesteps"))
	if p.numTrainTimesteps < 2 || p.numTrainTimesteps > 100000 {
		return bad("num_train_timesteps", "must be in [2, 100000]")
	}
	p.betaStart, p.betaEnd = f("beta_start"), f("beta_end")
	p.betaSchedule = s("beta_schedule")
	if tb, ok := vals["trained_betas"].([]any); ok && len(tb) > 0 {
		if len(tb) != p.numTrainTimesteps {
			return bad("trained_betas", fmt.Sprintf("length %d != num_train_timesteps %d", len(tb), p.numTrainTimesteps))
		}
		p.trainedBetas = make([]float64, len(tb))
		for i, x := range tb {
			p.trainedBetas[i] = x.(float64)
		}
	} else if err := oneOf("beta_schedule", "linear", "scaled_linear", "squaredcos_cap_v2"); err != nil {
		return err
	}
	if p.trainedBetas == nil && p.betaSchedule != "squaredcos_cap_v2" {
		if !(p.betaStart > 0 && p.betaStart < 1 && p.betaEnd > 0 && p.betaEnd < 1) {
			return bad("beta_start", fmt.Sprintf("beta_start %v and beta_end %v must be in (0,1)", p.betaStart, p.betaEnd))
		}
	}
	p.predictionType = s("prediction_type")
	if err := oneOf("prediction_type", "epsilon", "v_prediction", "sample"); err != nil {
		return err
	}
	p.timestepSpacing = s("timestep_spacing")
	if _, ok := vals["timestep_spacing"]; ok {
		if err := oneOf("timestep_spacing", "leading", "trailing", "linspace"); err != nil {
			return err
		}
	}
	p.stepsOffset = int(f("steps_offset"))
	if p.stepsOffset < 0 || p.stepsOffset >= p.numTrainTimesteps {
		return bad("steps_offset", "out of range")
	}
	p.clipSample = b("clip_sample")
	p.clipSampleRange = f("clip_sample_range")
	p.setAlphaToOne = b("set_alpha_to_one")
	p.skipPRKSteps = b("skip_prk_steps")
	p.thresholding = b("thresholding")
	p.dynThreshRatio = f("dynamic_thresholding_ratio")
	p.sampleMaxValue = f("sample_max_value")
	p.rescaleZeroSNR = b("rescale_betas_zero_snr")
	p.varianceType = s("variance_type")
	if _, ok := vals["variance_type"]; ok {
		if p.class == "DDPMScheduler" {
			if err := oneOf("variance_type", "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log"); err != nil {
				return err
			}
		} else if err := oneOf("variance_type", ""); err != nil {
			return err
		}
	}
	p.interpolation = s("interpolation_type")
	if _, ok := vals["interpolation_type"]; ok {
		if err := oneOf("interpolation_type", "linear", "log_linear"); err != nil {
			return err
		}
	}
	p.useKarras = b("use_karras_sigmas")
	if err := mustFalse("use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "use_lu_lambdas", "use_dynamic_shifting"); err != nil {
		return err
	}
	p.timestepType = s("timestep_type")
	if _, ok := vals["timestep_type"]; ok {
		if err := oneOf("timestep_type", "discrete", "continuous"); err != nil {
			return err
		}
	}
	p.finalSigmasType = s("final_sigmas_type")
	if _, ok := vals["final_sigmas_type"]; ok {
		if err := oneOf("final_sigmas_type", "zero", "sigma_min"); err != nil {
			return err
		}
	}
	p.sigmaMin, p.sigmaMax = fn("sigma_min"), fn("sigma_max")
	if _, ok := vals["solver_order"]; ok {
		p.solverOrder = int(f("solver_order"))
		max := 3
		if p.class == "DEISMultistepScheduler" || p.class == "UniPCMultistepScheduler" {
			max = 3
		}
		if p.solverOrder < 1 || p.solverOrder > max {
			return bad("solver_order", fmt.Sprintf("must be 1..%d", max))
		}
	}
	p.algorithmType = s("algorithm_type")
	switch p.class {
	case "DPMSolverMultistepScheduler":
		if err := oneOf("algorithm_type", "dpmsolver++", "sde-dpmsolver++", "dpmsolver", "sde-dpmsolver"); err != nil {
			return err
		}
	case "DPMSolverSinglestepScheduler":
		if err := oneOf("algorithm_type", "dpmsolver++", "sde-dpmsolver++", "dpmsolver"); err != nil {
			return err
		}
	case "DEISMultistepScheduler":
		if err := oneOf("algorithm_type", "deis"); err != nil {
			return err
		}
	}
	p.solverType = s("solver_type")
	switch p.class {
	case "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler":
		if err := oneOf("solver_type", "midpoint", "heun"); err != nil {
			return err
		}
	case "DEISMultistepScheduler":
		if err := oneOf("solver_type", "logrho"); err != nil {
			return err
		}
	case "UniPCMultistepScheduler":
		if err := oneOf("solver_type", "bh1", "bh2"); err != nil {
			return err
		}
	}
	p.lowerOrderFinal = b("lower_order_final")
	p.eulerAtFinal = b("euler_at_final")
	p.lambdaMinClipped = f("lambda_min_clipped")
	if _, ok := vals["lambda_min_clipped"]; ok && !math.IsInf(p.lambdaMinClipped, -1) {
		return bad("lambda_min_clipped", "only -Infinity is supported")
	}
	if v, ok := vals["time_shift_type"]; ok && v != "exponential" {
		return bad("time_shift_type", "only exponential is supported")
	}
	p.predictX0 = b("predict_x0")
	if _, ok := vals["predict_x0"]; ok && !p.predictX0 {
		return bad("predict_x0", "only true is supported")
	}
	if dc, ok := vals["disable_corrector"].([]any); ok {
		for _, x := range dc {
			p.disableCorrector = append(p.disableCorrector, int(x.(float64)))
		}
	}
	if v, ok := vals["solver_p"]; ok && v != nil {
		return bad("solver_p", "only null is supported")
	}
	if v, ok := vals["shift_terminal"]; ok && v != nil {
		return bad("shift_terminal", "only null is supported")
	}
	p.origInferSteps = int(f("original_inference_steps"))
	p.timestepScaling = f("timestep_scaling")
	if p.thresholding && !(p.dynThreshRatio > 0 && p.dynThreshRatio <= 1 && p.sampleMaxValue > 0) {
		return bad("dynamic_thresholding_ratio", "thresholding needs ratio in (0,1] and sample_max_value > 0")
	}
	return nil
}
