package scheduler

import (
	"math/rand/v2"
	"testing"
)

// benchStep measures one Step on a 4x64x64 latent (SD 1.x at 512x512).
func benchStep(b *testing.B, name string) {
	cfg := mustParse(b, defaultConfig)
	const size = 4 * 64 * 64
	const steps = 500
	s, err := New(name, cfg, Options{Steps: steps, Size: size, Noise: gaussNoise{rand.New(rand.NewPCG(1, 2))}})
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]float32, size)
	eps := make([]float32, size)
	for j := range lat {
		lat[j] = float32(j%13) * 0.1
		eps[j] = float32(j%7) * 0.1
	}
	n := len(s.Timesteps())
	i := 0
	b.ReportAllocs()
	b.SetBytes(size * 4)
	for b.Loop() {
		if i == n {
			b.StopTimer()
			s, err = New(name, cfg, Options{Steps: steps, Size: size, Noise: gaussNoise{rand.New(rand.NewPCG(1, 2))}})
			if err != nil {
				b.Fatal(err)
			}
			i = 0
			b.StartTimer()
		}
		if err := s.Step(eps, lat, i); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkStep(b *testing.B) {
	for _, name := range []string{"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "PLMS", "DDIM"} {
		b.Run(name, func(b *testing.B) { benchStep(b, name) })
	}
}
