package scheduler

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"testing"
)

type gaussNoise struct{ r *rand.Rand }

func (g gaussNoise) Randn(dst []float32) {
	for j := range dst {
		dst[j] = float32(g.r.NormFloat64())
	}
}

// defaultConfig is the SD 1.x scheduler config, inline so that tests that do
// not compare with diffusers run without the shared reference data.
const defaultConfig = `{
  "_class_name": "PNDMScheduler",
  "_diffusers_version": "0.24.0",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": false,
  "num_train_timesteps": 1000,
  "prediction_type": "epsilon",
  "set_alpha_to_one": false,
  "skip_prk_steps": true,
  "steps_offset": 1,
  "timestep_spacing": "leading",
  "trained_betas": null
}`

func mustParse(t testing.TB, s string) *Config {
	t.Helper()
	cfg, err := ParseConfig([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// runLoop drives s with a synthetic model over its whole schedule.
func runLoop(t testing.TB, s Scheduler, size int) []float32 {
	t.Helper()
	lat := make([]float32, size)
	gaussNoise{rand.New(rand.NewPCG(1, 2))}.Randn(lat)
	ins := float32(s.InitNoiseSigma())
	for j := range lat {
		lat[j] *= ins
	}
	x := make([]float32, size)
	eps := make([]float32, size)
	for i, ts := range s.Timesteps() {
		s.ScaleModelInput(x, lat, i)
		syntheticModel(eps, x, ts)
		if err := s.Step(eps, lat, i); err != nil {
			t.Fatal(err)
		}
	}
	return lat
}

func TestAllNamesRun(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	for _, name := range Names() {
		for _, steps := range []int{1, 2, 3, 7, 25} {
			s, err := New(name, cfg, Options{Steps: steps, Size: 16, Noise: gaussNoise{rand.New(rand.NewPCG(3, 4))}})
			if err != nil {
				t.Errorf("%s/%d: %v", name, steps, err)
				continue
			}
			out := runLoop(t, s, 16)
			for _, v := range out {
				if v != v || v > 1e6 || v < -1e6 {
					t.Errorf("%s/%d: non-finite or huge output %v", name, steps, v)
					break
				}
			}
		}
	}
}

func TestStepAllocatesNothing(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	const size = 4 * 8 * 8
	for _, name := range Names() {
		s, err := New(name, cfg, Options{Steps: 50, Size: size, Noise: gaussNoise{rand.New(rand.NewPCG(5, 6))}})
		if err != nil {
			t.Fatal(err)
		}
		lat := make([]float32, size)
		eps := make([]float32, size)
		x := make([]float32, size)
		for j := range lat {
			lat[j] = float32(j%7) * 0.1
			eps[j] = float32(j%5) * 0.1
		}
		i := 0
		// warm up with two steps, then measure one step per run.
		for ; i < 2; i++ {
			s.ScaleModelInput(x, lat, i)
			if err := s.Step(eps, lat, i); err != nil {
				t.Fatal(err)
			}
		}
		n := len(s.Timesteps())
		allocs := testing.AllocsPerRun(min(20, n-i-1), func() {
			s.ScaleModelInput(x, lat, i)
			if err := s.Step(eps, lat, i); err != nil {
				t.Fatal(err)
			}
			i++
		})
		if allocs != 0 {
			t.Errorf("%s: Step allocates %v times per call", name, allocs)
		}
	}
}

func TestNewErrors(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	noise := gaussNoise{rand.New(rand.NewPCG(1, 1))}
	tests := []struct {
		name    string
		sched   string
		opts    Options
		wantErr error
	}{
		{"unknown", "Nope", Options{Steps: 20, Size: 4}, ErrUnknownScheduler},
		{"zero steps", "Euler", Options{Steps: 0, Size: 4}, ErrOptions},
		{"too many steps", "Euler", Options{Steps: 1001, Size: 4}, ErrOptions},
		{"negative strength", "Euler", Options{Steps: 20, Size: 4, Strength: -0.1}, ErrOptions},
		{"strength above one", "Euler", Options{Steps: 20, Size: 4, Strength: 1.5}, ErrOptions},
		{"tiny strength", "Euler", Options{Steps: 20, Size: 4, Strength: 0.01}, ErrOptions},
		{"no size", "Euler", Options{Steps: 20}, ErrOptions},
		{"no noise", "Euler a", Options{Steps: 20, Size: 4}, ErrOptions},
		{"no noise ddim eta", "DDIM", Options{Steps: 20, Size: 4, Eta: 0.5}, ErrOptions},
		{"bad override", "Euler", Options{Steps: 20, Size: 4, Overrides: map[string]any{"beta_schedule": "sigmoid"}}, ErrConfig},
		{"foreign override", "Euler", Options{Steps: 20, Size: 4, Overrides: map[string]any{"skip_prk_steps": true}}, ErrConfig},
		{"bad type", "Euler", Options{Steps: 20, Size: 4, Overrides: map[string]any{"use_karras_sigmas": "yes"}}, ErrConfig},
		{"unsupported sigmas", "Euler", Options{Steps: 20, Size: 4, Overrides: map[string]any{"use_exponential_sigmas": true}}, ErrConfig},
		{"bad spacing", "DDIM", Options{Steps: 20, Size: 4, Overrides: map[string]any{"timestep_spacing": "random"}}, ErrConfig},
		{"bad prediction", "DDIM", Options{Steps: 20, Size: 4, Overrides: map[string]any{"prediction_type": "flow"}}, ErrConfig},
		{"ok", "Euler a", Options{Steps: 20, Size: 4, Noise: noise}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(tt.sched, cfg, tt.opts)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr != nil && err == nil) {
				t.Errorf("New: got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	tests := []struct {
		name, json string
		ok         bool
	}{
		{"valid", defaultConfig, true},
		{"empty", ``, false},
		{"not object", `[1,2]`, false},
		{"trailing", `{"beta_start": 0.1} {}`, false},
		{"syntax", `{"beta_start": 0.1,}`, false},
		{"wrong type", `{"beta_start": "x"}`, false},
		{"non-integer", `{"num_train_timesteps": 10.5}`, false},
		{"infinity", `{"lambda_min_clipped": "-Infinity"}`, true},
		{"unknown keys kept", `{"_class_name": "X", "whatever": [1, {"a": 2}]}`, true},
		{"null bool", `{"clip_sample": null}`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tt.json))
			if (err == nil) != tt.ok {
				t.Errorf("ParseConfig: err = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrConfig) {
				t.Errorf("error %v does not wrap ErrConfig", err)
			}
		})
	}
}

func TestStepOrder(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	s, err := New("Euler", cfg, Options{Steps: 2, Size: 4})
	if err != nil {
		t.Fatal(err)
	}
	buf, eps := make([]float32, 4), make([]float32, 4)
	if err := s.Step(eps, buf, 1); !errors.Is(err, ErrStepOrder) {
		t.Errorf("out of order step: got %v", err)
	}
	for i := range 2 {
		if err := s.Step(eps, buf, i); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Step(eps, buf, 2); !errors.Is(err, ErrStepOrder) {
		t.Errorf("step past the end: got %v", err)
	}
}

// TestClassKeysMatchReference checks that each class reads exactly the
// __init__ parameters diffusers lists in its saved config.
func TestClassKeysMatchReference(t *testing.T) {
	dir := referenceDir(t)
	files, _ := filepath.Glob(filepath.Join(dir, "schedulers", "*.json"))
	seen := map[string]bool{}
	for _, f := range files {
		c := loadCaseConfig(t, f)
		if seen[c.class] {
			continue
		}
		seen[c.class] = true
		defs, ok := classDefaults[c.class]
		if !ok {
			t.Errorf("%s: class not in classDefaults", c.class)
			continue
		}
		for _, k := range c.params {
			if _, ok := defs[k]; !ok {
				t.Errorf("%s: parameter %q missing", c.class, k)
			}
		}
		if len(defs) != len(c.params) {
			t.Errorf("%s: %d parameters, diffusers has %d", c.class, len(defs), len(c.params))
		}
	}
}

func TestTimestepOutOfRange(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	// 1000 leading steps with steps_offset 1 reach timestep 1000.
	if _, err := New("DDIM", cfg, Options{Steps: 1000, Size: 4}); !errors.Is(err, ErrOptions) {
		t.Errorf("got %v, want ErrOptions", err)
	}
}
