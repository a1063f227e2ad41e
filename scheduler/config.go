package scheduler

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
)

// ErrConfig is wrapped by every error about a malformed or unsupported
// scheduler configuration.
var ErrConfig = errors.New("scheduler: invalid config")

// ConfigError reports a problem with one configuration field.
type ConfigError struct {
	Field  string // the JSON key, e.g. "beta_schedule"
	Reason string
}

// Error implements error.
func (e *ConfigError) Error() string {
	return fmt.Sprintf("scheduler: config field %q: %s", e.Field, e.Reason)
}

// Unwrap returns ErrConfig so that errors.Is(err, ErrConfig) holds.
func (e *ConfigError) Unwrap() error { return ErrConfig }

// Config is a parsed diffusers scheduler_config.json. It keeps every key of
// the file; which keys a scheduler reads depends on the scheduler class chosen
// in New, exactly as diffusers' from_config ignores keys a class does not
// accept. A Config is immutable after parsing and safe for concurrent use.
type Config struct {
	raw map[string]any // values are float64, bool, string, nil or []any
}

// kind is the JSON type a known configuration key must have.
type kind int

const (
	kFloat       kind = iota // number (or "Infinity"/"-Infinity")
	kInt                     // integral number
	kBool                    // true/false
	kString                  // string
	kStringOrNil             // string or null
	kFloatOrNil              // number or null
	kIntOrNil                // integral number or null
	kFloatList               // null or list of numbers
	kIntList                 // list of integral numbers
)

// knownKeys lists every key that at least one supported scheduler reads,
// with its JSON type.
var knownKeys = map[string]kind{
	"num_train_timesteps":        kInt,
	"beta_start":                 kFloat,
	"beta_end":                   kFloat,
	"beta_schedule":              kString,
	"trained_betas":              kFloatList,
	"prediction_type":            kString,
	"timestep_spacing":           kString,
	"steps_offset":               kInt,
	"clip_sample":                kBool,
	"clip_sample_range":          kFloat,
	"set_alpha_to_one":           kBool,
	"skip_prk_steps":             kBool,
	"thresholding":               kBool,
	"dynamic_thresholding_ratio": kFloat,
	"sample_max_value":           kFloat,
	"rescale_betas_zero_snr":     kBool,
	"variance_type":              kStringOrNil,
	"interpolation_type":         kString,
	"use_karras_sigmas":          kBool,
	"use_exponential_sigmas":     kBool,
	"use_beta_sigmas":            kBool,
	"use_flow_sigmas":            kBool,
	"use_lu_lambdas":             kBool,
	"use_dynamic_shifting":       kBool,
	"flow_shift":                 kFloat,
	"time_shift_type":            kString,
	"sigma_min":                  kFloatOrNil,
	"sigma_max":                  kFloatOrNil,
	"timestep_type":              kString,
	"final_sigmas_type":          kString,
	"solver_order":               kInt,
	"algorithm_type":             kString,
	"solver_type":                kString,
	"lower_order_final":          kBool,
	"euler_at_final":             kBool,
	"lambda_min_clipped":         kFloat,
	"predict_x0":                 kBool,
	"disable_corrector":          kIntList,
	"solver_p":                   kStringOrNil,
	"shift_terminal":             kFloatOrNil,
	"original_inference_steps":   kInt,
	"timestep_scaling":           kFloat,
	"noise_sampler_seed":         kIntOrNil,
}

// ParseConfig parses a scheduler_config.json document. The JSON must be
// well formed and every key known to any supported scheduler must have the
// right type; the strings "Infinity" and "-Infinity" are accepted for
// floating-point fields. Unknown keys (such as "_class_name") are kept but
// ignored. It is safe for concurrent use.
func ParseConfig(data []byte) (*Config, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var raw map[string]any
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if raw == nil {
		return nil, fmt.Errorf("%w: not a JSON object", ErrConfig)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%w: trailing data after JSON object", ErrConfig)
	}
	for k, v := range raw {
		nv, err := normalize(k, v)
		if err != nil {
			return nil, err
		}
		raw[k] = nv
	}
	return &Config{raw: raw}, nil
}

// LoadConfig reads and parses a scheduler_config.json file. It is safe for
// concurrent use.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scheduler: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Keys returns the configuration keys in sorted order.
func (c *Config) Keys() []string {
	keys := make([]string, 0, len(c.raw))
	for k := range c.raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// ClassName returns the "_class_name" entry of the configuration, or "" when
// there is none.
func (c *Config) ClassName() string {
	s, _ := c.raw["_class_name"].(string)
	return s
}

// normalize checks the type of a known key and converts "Infinity" strings
// and integer-valued Go ints to float64.
func normalize(key string, v any) (any, error) {
	k, ok := knownKeys[key]
	if !ok {
		return v, nil
	}
	bad := func(want string) error {
		return &ConfigError{Field: key, Reason: fmt.Sprintf("want %s, got %v (%T)", want, v, v)}
	}
	switch x := v.(type) {
	case int:
		v = float64(x)
	case int64:
		v = float64(x)
	case float32:
		v = float64(x)
	}
	switch k {
	case kFloat, kFloatOrNil:
		switch x := v.(type) {
		case float64:
			return x, nil
		case string:
			switch x {
			case "Infinity", "inf":
				return math.Inf(1), nil
			case "-Infinity", "-inf":
				return math.Inf(-1), nil
			}
		case nil:
			if k == kFloatOrNil {
				return nil, nil
			}
		}
		return nil, bad("number")
	case kInt, kIntOrNil:
		switch x := v.(type) {
		case float64:
			if x == math.Trunc(x) && math.Abs(x) < 1<<31 {
				return x, nil
			}
		case nil:
			if k == kIntOrNil {
				return nil, nil
			}
		}
		return nil, bad("integer")
	case kBool:
		if b, ok := v.(bool); ok {
			return b, nil
		}
		return nil, bad("boolean")
	case kString, kStringOrNil:
		switch x := v.(type) {
		case string:
			return x, nil
		case nil:
			if k == kStringOrNil {
				return nil, nil
			}
		}
		return nil, bad("string")
	case kFloatList, kIntList:
		switch x := v.(type) {
		case nil:
			if k == kFloatList {
				return nil, nil
			}
		case []any:
			out := make([]any, len(x))
			for i, e := range x {
				switch f := e.(type) {
				case float64:
					if k == kIntList && f != math.Trunc(f) {
						return nil, bad("list of integers")
					}
					out[i] = f
				case int:
					out[i] = float64(f)
				default:
					return nil, bad("list of numbers")
				}
			}
			return out, nil
		case []float64:
			out := make([]any, len(x))
			for i, f := range x {
				out[i] = f
			}
			return out, nil
		case []int:
			out := make([]any, len(x))
			for i, f := range x {
				out[i] = float64(f)
			}
			return out, nil
		}
		return nil, bad("list")
	}
	return v, nil
}
