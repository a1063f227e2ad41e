package scheduler

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// The scheduler work of one request at the bench's default size (256×256,
// latents 4×32×32): construction (once a request, in the encode stage) and
// the per-step input scaling. BenchmarkStep in bench_test.go times Step.

func BenchmarkNew(b *testing.B) {
	cfg := mustParse(b, defaultConfig)
	for _, name := range []string{"PNDM", "Euler a", "DPM++ 2M Karras", "UniPC"} {
		for _, steps := range []int{10, 50} {
			b.Run(fmt.Sprintf("%s/steps=%d", name, steps), func(b *testing.B) {
				noise := gaussNoise{rand.New(rand.NewPCG(1, 2))}
				b.ReportAllocs()
				for b.Loop() {
					if _, err := New(name, cfg, Options{Steps: steps, Size: 4 * 32 * 32, Noise: noise}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkScaleModelInput(b *testing.B) {
	cfg := mustParse(b, defaultConfig)
	for _, name := range []string{"PNDM", "Euler a"} {
		for _, side := range []int{32, 64} {
			size := 4 * side * side
			b.Run(fmt.Sprintf("%s/%dx%d", name, 8*side, 8*side), func(b *testing.B) {
				s, err := New(name, cfg, Options{Steps: 10, Size: size, Noise: gaussNoise{rand.New(rand.NewPCG(1, 2))}})
				if err != nil {
					b.Fatal(err)
				}
				src, dst := make([]float32, size), make([]float32, size)
				for i := range src {
					src[i] = float32(i%13) * 0.1
				}
				b.ReportAllocs()
				b.SetBytes(int64(4 * size))
				for b.Loop() {
					s.ScaleModelInput(dst, src, 0)
				}
			})
		}
	}
}

// BenchmarkLoop is a whole denoising loop of the scheduler alone (no
// model: the prediction is a fixed tensor) at 256×256.
func BenchmarkLoop(b *testing.B) {
	cfg := mustParse(b, defaultConfig)
	const size = 4 * 32 * 32
	for _, name := range []string{"PNDM", "Euler a", "DPM++ 2M Karras"} {
		b.Run(name+"/steps=10", func(b *testing.B) {
			eps, lat, x := make([]float32, size), make([]float32, size), make([]float32, size)
			for i := range eps {
				eps[i] = float32(i%7) * 0.1
			}
			b.ReportAllocs()
			for b.Loop() {
				s, err := New(name, cfg, Options{Steps: 10, Size: size, Noise: gaussNoise{rand.New(rand.NewPCG(1, 2))}})
				if err != nil {
					b.Fatal(err)
				}
				for i := range s.Timesteps() {
					s.ScaleModelInput(x, lat, i)
					if err := s.Step(eps, lat, i); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
