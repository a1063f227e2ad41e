package pipeline

import (
	"context"
	"fmt"
	"image"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/scheduler"
)

// The pure-Go work of a request, without models: what the engine adds
// around ONNX Runtime. Sizes are named by image side; latents are 1/8.

var benchSides = []int{256, 512}

func benchLatents(n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(i%97)/48.5 - 1
	}
	return x
}

func BenchmarkGuide(b *testing.B) {
	for _, side := range benchSides {
		b.Run(fmt.Sprintf("%dx%d", side, side), func(b *testing.B) {
			n := 4 * (side / 8) * (side / 8)
			u, c := benchLatents(n), benchLatents(n)
			b.ReportAllocs()
			b.SetBytes(int64(8 * n))
			for b.Loop() {
				guide(u, c, 7.5)
			}
		})
	}
}

func BenchmarkToHWC(b *testing.B) {
	for _, side := range benchSides {
		b.Run(fmt.Sprintf("%dx%d", side, side), func(b *testing.B) {
			src := benchLatents(3 * side * side)
			dst := make([]float32, len(src))
			b.ReportAllocs()
			b.SetBytes(int64(4 * len(src)))
			for b.Loop() {
				if err := toHWC(dst, src, side, side); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkToNRGBA(b *testing.B) {
	for _, side := range benchSides {
		b.Run(fmt.Sprintf("%dx%d", side, side), func(b *testing.B) {
			px := benchLatents(3 * side * side)
			for i := range px {
				px[i] = px[i]/2 + 0.5
			}
			b.ReportAllocs()
			b.SetBytes(int64(4 * len(px)))
			for b.Loop() {
				toNRGBA(px, side, side)
			}
		})
	}
}

func benchImage(side int) *image.NRGBA {
	px := benchLatents(3 * side * side)
	for i := range px {
		px[i] = px[i]/2 + 0.5
	}
	return toNRGBA(px, side, side)
}

func BenchmarkImageTensor(b *testing.B) {
	for _, side := range benchSides {
		b.Run(fmt.Sprintf("%dx%d", side, side), func(b *testing.B) {
			img := benchImage(side)
			b.ReportAllocs()
			for b.Loop() {
				imageTensor(img)
			}
		})
	}
}

// instantComponents are models that return at once, so that Generate
// measures the engine's own work: tokenizing, scheduling, guidance, the
// stages' hand-offs and the conversions to images.
func instantComponents(b *testing.B) Components {
	b.Helper()
	cfg, err := scheduler.ParseConfig([]byte(sdSchedulerConfig))
	if err != nil {
		b.Fatal(err)
	}
	const hidden = 768
	return Components{
		Tokenizer: fakeTokenizer{},
		TextEncoder: EncoderFunc(func(_ context.Context, ids []int32, batch int) (*tensor.Dense, error) {
			seq := len(ids) / batch
			return tensor.New(tensor.WithShape(batch, seq, hidden), tensor.WithBacking(make([]float32, batch*seq*hidden))), nil
		}),
		UNet: DenoiserFunc(func(_ context.Context, x *tensor.Dense, _ []float64, _ *tensor.Dense) (*tensor.Dense, error) {
			s := x.Shape()
			out := make([]float32, s[0]*s[1]*s[2]*s[3])
			copy(out, x.Data().([]float32))
			return tensor.New(tensor.WithShape(s...), tensor.WithBacking(out)), nil
		}),
		VAEDecoder: DecoderFunc(func(_ context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
			s := lat.Shape()
			out := make([]float32, s[0]*3*64*s[2]*s[3])
			return tensor.New(tensor.WithShape(s[0], 3, 8*s[2], 8*s[3]), tensor.WithBacking(out)), nil
		}),
		Scheduler: cfg,
	}
}

// BenchmarkGenerateOverhead is one request through the engine with models
// that cost nothing: the time the engine adds to a request.
func BenchmarkGenerateOverhead(b *testing.B) {
	for _, side := range benchSides {
		const steps = 10
		b.Run(fmt.Sprintf("%dx%d/steps=%d", side, side, steps), func(b *testing.B) {
			p, err := New(instantComponents(b), Options{})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { p.Close() })
			req := Request{Prompt: "a lighthouse at dusk", Width: side, Height: side, Steps: steps, Seed: 1}
			if _, err := p.Generate(b.Context(), req); err != nil { // warm up
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Generate(b.Context(), req); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*steps)/b.Elapsed().Seconds(), "steps/s")
		})
	}
}
