package scheduler

import (
	"math/rand/v2"
	"testing"
)

// FuzzParseConfig checks that no configuration makes ParseConfig or New
// panic, and that a scheduler built from an accepted one runs.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(defaultConfig), "Euler", 5)
	f.Add([]byte(`{"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 10}`), "DDIM", 3)
	f.Add([]byte(`{"trained_betas": [0.1, 0.2], "num_train_timesteps": 2}`), "DPM++ 2M", 1)
	f.Add([]byte(`{"timestep_spacing": "trailing", "steps_offset": 3, "num_train_timesteps": 7}`), "Heun", 7)
	f.Add([]byte(`{"use_karras_sigmas": true, "beta_start": 0.5, "beta_end": 0.9}`), "DPM2 a", 9)
	f.Fuzz(func(t *testing.T, data []byte, name string, steps int) {
		cfg, err := ParseConfig(data)
		if err != nil {
			return
		}
		if _, err := ClassOf(name); err != nil {
			name = "Euler"
		}
		steps = 1 + (steps&0xff)%60
		s, err := New(name, cfg, Options{Steps: steps, Size: 4, Noise: gaussNoise{rand.New(rand.NewPCG(1, 2))}})
		if err != nil {
			return
		}
		lat := []float32{0.1, -0.2, 0.3, -0.4}
		x := make([]float32, 4)
		eps := make([]float32, 4)
		for i, ts := range s.Timesteps() {
			s.ScaleModelInput(x, lat, i)
			syntheticModel(eps, x, ts)
			if err := s.Step(eps, lat, i); err != nil {
				t.Fatal(err)
			}
		}
	})
}
