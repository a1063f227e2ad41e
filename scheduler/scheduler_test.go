package scheduler

import (
	"errors"
	"fmt"
	"math"
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

func TestConcurrentNew(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	names := Names()
	done := make(chan []float32, len(names))
	for i, name := range names {
		go func() {
			s, err := New(name, cfg, Options{Steps: 10, Size: 16, Noise: gaussNoise{rand.New(rand.NewPCG(uint64(i), 1))}})
			if err != nil {
				t.Error(err)
				done <- nil
				return
			}
			done <- runLoop(t, s, 16)
		}()
	}
	for range names {
		<-done
	}
}

func TestAliasesApplyOverrides(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	a, err := New("DPM++ 2M Karras", cfg, Options{Steps: 20, Size: 4})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New("DPMSolverMultistepScheduler", cfg, Options{Steps: 20, Size: 4, Overrides: map[string]any{"use_karras_sigmas": true}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New("DPMSolverMultistepScheduler", cfg, Options{Steps: 20, Size: 4})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(a.Timesteps()) != fmt.Sprint(b.Timesteps()) {
		t.Errorf("alias timesteps %v != class+override %v", a.Timesteps(), b.Timesteps())
	}
	if fmt.Sprint(a.Timesteps()) == fmt.Sprint(c.Timesteps()) {
		t.Errorf("karras override had no effect")
	}
	for _, name := range Names() {
		if _, err := ClassOf(name); err != nil {
			t.Errorf("ClassOf(%q): %v", name, err)
		}
	}
}

func TestThresholdSample(t *testing.T) {
	// 100 values |x| = 0..9.9; the 0.9 quantile is 8.91, clamped to max 5.
	x := make([]float32, 100)
	for j := range x {
		x[j] = float32(j) / 10
		if j%2 == 1 {
			x[j] = -x[j]
		}
	}
	buf := make([]float32, len(x))
	y := append([]float32(nil), x...)
	thresholdSample(y, buf, 0.9, 5)
	for j := range y {
		want := min(max(x[j], -5), 5) / 5
		if y[j] != want {
			t.Fatalf("y[%d] = %v, want %v", j, y[j], want)
		}
	}
	// With a large max the quantile itself is used: 0.9*99 = 89.1 -> 8.9 + 0.1*0.1.
	y = append(y[:0], x...)
	thresholdSample(y, buf, 0.9, 100)
	q := float32(8.91)
	if got := y[99]; math.Abs(float64(got-(-1))) > 1e-6 && math.Abs(float64(got)-float64(x[99]/q)) > 1e-6 {
		t.Errorf("y[99] = %v", got)
	}
	if got, want := y[10], x[10]/q; math.Abs(float64(got-want)) > 1e-6 {
		t.Errorf("y[10] = %v, want %v", got, want)
	}
}

func TestImg2ImgTruncation(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	tests := []struct {
		name  string
		logic Img2ImgLogic
		steps int
		s     float64
		want  int // model evaluations
	}{
		{"Euler", Modern, 20, 0.6, 12},
		{"Euler", LegacyONNX, 20, 0.6, 12},
		{"Heun", Modern, 20, 0.5, 19},
		{"PLMS", Modern, 20, 0.6, 13},
		{"PLMS", LegacyONNX, 20, 0.6, 13},
		{"DDIM", Modern, 50, 1, 50},
		{"DPM++ 2M", Modern, 10, 0.35, 3},
	}
	for _, tt := range tests {
		s, err := New(tt.name, cfg, Options{Steps: tt.steps, Size: 4, Strength: tt.s, Img2Img: tt.logic})
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got := len(s.Timesteps()); got != tt.want {
			t.Errorf("%s %v strength %v: %d evaluations, want %d", tt.name, tt.logic, tt.s, got, tt.want)
		}
		orig := []float32{1, 2, 3, 4}
		noise := []float32{0, 0, 0, 0}
		dst := make([]float32, 4)
		s.AddNoise(dst, orig, noise)
		for j := range dst {
			if dst[j] == 0 || dst[j] != dst[j] {
				t.Errorf("%s: AddNoise gave %v", tt.name, dst)
				break
			}
		}
	}
}

func TestHigherOrders(t *testing.T) {
	cfg := mustParse(t, defaultConfig)
	for _, tc := range []struct {
		name string
		ov   map[string]any
	}{
		{"DPMSolverMultistepScheduler", map[string]any{"solver_order": 3}},
		{"DPMSolverMultistepScheduler", map[string]any{"solver_order": 3, "use_karras_sigmas": true}},
		{"DPMSolverMultistepScheduler", map[string]any{"use_karras_sigmas": true, "final_sigmas_type": "sigma_min"}},
		{"DPMSolverMultistepScheduler", map[string]any{"solver_type": "heun", "algorithm_type": "sde-dpmsolver++"}},
		{"DPMSolverMultistepScheduler", map[string]any{"thresholding": true, "prediction_type": "sample"}},
		{"DPMSolverSinglestepScheduler", map[string]any{"solver_order": 1}},
		{"UniPCMultistepScheduler", map[string]any{"solver_order": 3}},
		{"UniPCMultistepScheduler", map[string]any{"solver_type": "bh1", "use_karras_sigmas": true}},
		{"DEISMultistepScheduler", map[string]any{"solver_order": 3}},
		{"DDIMScheduler", map[string]any{"clip_sample": true, "rescale_betas_zero_snr": true, "timestep_spacing": "trailing"}},
		{"DDPMScheduler", map[string]any{"variance_type": "fixed_large", "beta_schedule": "squaredcos_cap_v2"}},
		{"EulerDiscreteScheduler", map[string]any{"timestep_type": "continuous", "prediction_type": "v_prediction"}},
		{"EulerDiscreteScheduler", map[string]any{"interpolation_type": "log_linear", "final_sigmas_type": "sigma_min"}},
		{"KDPM2DiscreteScheduler", map[string]any{"use_karras_sigmas": true}},
		{"LMSDiscreteScheduler", map[string]any{"use_karras_sigmas": true, "prediction_type": "v_prediction"}},
		{"PNDMScheduler", map[string]any{"skip_prk_steps": false, "prediction_type": "v_prediction"}},
		{"PNDMScheduler", map[string]any{"timestep_spacing": "trailing"}},
		{"PNDMScheduler", map[string]any{"timestep_spacing": "linspace"}},
	} {
		for _, steps := range []int{4, 15, 30} {
			s, err := New(tc.name, cfg, Options{Steps: steps, Size: 16, Overrides: tc.ov, Noise: gaussNoise{rand.New(rand.NewPCG(9, 9))}})
			if err != nil {
				t.Errorf("%s %v: %v", tc.name, tc.ov, err)
				continue
			}
			for _, v := range runLoop(t, s, 16) {
				if v != v || math.IsInf(float64(v), 0) || math.Abs(float64(v)) > 100 {
					t.Errorf("%s %v %d steps: bad output %v", tc.name, tc.ov, steps, v)
					break
				}
			}
		}
	}
}
