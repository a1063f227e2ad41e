package scheduler

import (
	"slices"
	"testing"
)

// TestAddNoiseAt checks that AddNoiseAt at evaluation 0 of a full schedule
// is AddNoise there (the txt2img start), that it matches an img2img
// scheduler's AddNoise at the evaluation its strength starts from, that the
// end gives the original back, and that AddNoise is left as it was.
func TestAddNoiseAt(t *testing.T) {
	cfg, err := ParseConfig([]byte(`{"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
		"beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1, "skip_prk_steps": true,
		"set_alpha_to_one": false}`))
	if err != nil {
		t.Fatal(err)
	}
	const size = 16
	orig, noise := make([]float32, size), make([]float32, size)
	for i := range orig {
		orig[i], noise[i] = float32(i)/size-0.5, float32(size-i)/size
	}
	for _, name := range []string{"PNDMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler", "HeunDiscreteScheduler"} {
		t.Run(name, func(t *testing.T) {
			full, err := New(name, cfg, Options{Steps: 10, Size: size})
			if err != nil {
				t.Fatal(err)
			}
			half, err := New(name, cfg, Options{Steps: 10, Size: size, Strength: 0.5})
			if err != nil {
				t.Fatal(err)
			}
			want, got := make([]float32, size), make([]float32, size)
			full.AddNoise(want, orig, noise)
			AddNoiseAt(full, got, orig, noise, 0)
			if !slices.Equal(got, want) {
				t.Errorf("evaluation 0: %v, AddNoise gives %v", got, want)
			}
			i := len(full.Timesteps()) - len(half.Timesteps())
			half.AddNoise(want, orig, noise)
			AddNoiseAt(full, got, orig, noise, i)
			if !slices.Equal(got, want) {
				t.Errorf("evaluation %d: %v, strength 0.5's AddNoise gives %v", i, got, want)
			}
			AddNoiseAt(full, got, orig, noise, len(full.Timesteps()))
			if !slices.Equal(got, orig) {
				t.Errorf("end: %v, want the original", got)
			}
			full.AddNoise(got, orig, noise)
			AddNoiseAt(full, want, orig, noise, 0)
			if !slices.Equal(got, want) {
				t.Error("AddNoiseAt changed AddNoise")
			}
		})
	}
}
