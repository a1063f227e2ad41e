package pipeline

import (
	"cmp"
	"context"
	"image"
	"math"
	"path/filepath"
	"sync"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/unet"
)

// loadInpaintReference returns the reference run, its init image and mask
// and the model folder, or skips without ../shared.
func loadInpaintReference(t *testing.T) (ref *testenv.TinyInpaintReference, img, mask image.Image, model string) {
	t.Helper()
	dir, img, mask := testenv.TinyInpaint(t)
	return testenv.LoadTinyInpaintReference(t), img, mask, filepath.Join(dir, "model")
}

// TestParityInpaint runs the tiny 9-channel inpainting model on the
// reference's image, mask and noise and compares with diffusers' own
// OnnxStableDiffusionInpaintPipeline run: the masked image handed to the
// VAE encoder, the first UNet input (latents, mask, masked-image latents),
// the text embeddings, every step's latents and the image. The legacy
// vae_encoder samples inside its graph, so the recorded output is injected
// for its one call (tiny-inpaint/README.md).
func TestParityInpaint(t *testing.T) {
	const tol = 1e-4
	ref, img, mask, dir := loadInpaintReference(t)
	run := &ref.Results.ORT
	comps := componentsFrom(t, dir)
	un := comps.UNet.(*unet.Model)
	if un.InChannels() != 9 {
		t.Fatalf("the UNet reads as %d input channels, want 9 (conv_in.weight)", un.InChannels())
	}
	comps.UNetInChannels = un.InChannels()
	var mu sync.Mutex
	encoderIn, sampleIn := math.Inf(1), math.Inf(1)
	encoderCalls, unetCalls := 0, 0
	comps.VAEEncoder = ImageEncoderFunc(func(_ context.Context, x *tensor.Dense) (*tensor.Dense, error) {
		mu.Lock()
		defer mu.Unlock()
		encoderCalls++
		encoderIn = testenv.MaxAbsDiff(x.Data().([]float32), run.VAEEncoderInput)
		s := run.VAEEncoderOutputShape
		return tensor.New(tensor.WithShape(s...), tensor.WithBacking(append([]float32(nil), run.VAEEncoderOutput...))), nil
	})
	comps.UNet = DenoiserFunc(func(ctx context.Context, x *tensor.Dense, ts []float64, c *tensor.Dense) (*tensor.Dense, error) {
		mu.Lock()
		if unetCalls == 0 {
			sampleIn = testenv.MaxAbsDiff(x.Data().([]float32), run.Steps[0].SampleInput)
		}
		unetCalls++
		mu.Unlock()
		return un.Predict(ctx, x, ts, c)
	})
	p, err := New(comps, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	text := math.Inf(1)
	steps := make([]float64, len(run.Steps))
	for i := range steps {
		steps[i] = math.Inf(1)
	}
	res, err := p.Generate(t.Context(), Request{
		Prompt: ref.Call.Prompt, Width: ref.Call.Width, Height: ref.Call.Height, Steps: ref.Call.Steps,
		GuidanceScale: new(ref.Call.GuidanceScale), Latents: ref.InitialLatents,
		InitImage: img, Mask: mask,
		OnStep: func(s Step) {
			mu.Lock()
			defer mu.Unlock()
			i := s.Step - 1
			if s.Step == 1 {
				emb := s.TextEmbeddings.Data().([]float32)
				n := len(emb) / 2
				text = max(testenv.MaxAbsDiff(emb[n:], run.TextEncoderCalls[0].LastHiddenState),
					testenv.MaxAbsDiff(emb[:n], run.TextEncoderCalls[1].LastHiddenState))
			}
			if i < len(steps) && s.Timestep == run.Steps[i].T {
				steps[i] = testenv.MaxAbsDiff(s.Latents.Data().([]float32), run.Steps[i].LatentsAfter)
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if encoderCalls != 1 || unetCalls != len(run.Steps) {
		t.Errorf("%d VAE encoder and %d UNet calls, diffusers made 1 and %d", encoderCalls, unetCalls, len(run.Steps))
	}
	for _, c := range []struct {
		name string
		d    float64
	}{{"masked image (VAE encoder input)", encoderIn}, {"first UNet sample (latents, mask, masked-image latents)", sampleIn}, {"text embeddings", text}} {
		if c.d > tol {
			t.Errorf("%s differs from diffusers by %g", c.name, c.d)
		}
	}
	worst := 0.0
	for i, d := range steps {
		if d > tol {
			t.Errorf("step %d: latents differ from diffusers by %g", i, d)
		}
		worst = max(worst, d)
	}
	im := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), run.Image)
	if im > tol {
		t.Errorf("image differs from diffusers by %g", im)
	}
	t.Logf("max |Δ|: masked image %.2g, first UNet sample %.2g, text %.2g, latents (all steps) %.2g, image %.2g", encoderIn, sampleIn, text, worst, im)
}

// TestMaskedImg2Img runs a mask on the 4-channel tiny reference model:
// after every step the kept latents are the init latents noised to the
// next step's level, so the final latents equal the scaled init latents
// there exactly, and the repainted ones differ from them.
func TestMaskedImg2Img(t *testing.T) {
	comps := referenceComponents(t)
	enc := comps.VAEEncoder
	var mu sync.Mutex
	var encoded []float32
	comps.VAEEncoder = ImageEncoderFunc(func(ctx context.Context, x *tensor.Dense) (*tensor.Dense, error) {
		out, err := enc.Encode(ctx, x) // the legacy encoder samples: keep what it gave
		if err == nil {
			mu.Lock()
			encoded = append([]float32(nil), out.Data().([]float32)...)
			mu.Unlock()
		}
		return out, err
	})
	p, err := New(comps, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const size = 64
	sf := float32(cmp.Or(comps.ScalingFactor, 0.18215))
	init := image.NewNRGBA(image.Rect(0, 0, size, size))
	for i := range init.Pix {
		init.Pix[i] = uint8(i * 7)
	}
	mask := image.NewGray(init.Rect)
	for y := 16; y < 48; y++ { // the middle 32×32 pixels: latents 2..5
		for x := 16; x < 48; x++ {
			mask.Pix[y*size+x] = 255
		}
	}
	for _, sched := range []string{"", "Euler a", "DPM++ 2M"} {
		for _, strength := range []float64{0.6, 1} {
			var last []float32
			_, err := p.Generate(t.Context(), Request{
				Prompt: "a cat", Steps: 6, Seed: 3, Scheduler: sched, InitImage: init, Mask: mask, Strength: strength,
				OnStep: func(s Step) { last = s.Latents.Data().([]float32) },
			})
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			const lw = size / 8
			kept, changed := 0.0, 0.0
			for i, v := range last {
				y, x := i%(lw*lw)/lw, i%lw
				d := math.Abs(float64(v) - float64(encoded[i]*sf))
				if y >= 2 && y < 6 && x >= 2 && x < 6 {
					changed = max(changed, d)
				} else {
					kept = max(kept, d)
				}
			}
			mu.Unlock()
			if kept > 1e-6 || changed < 1e-2 {
				t.Errorf("%q strength %v: kept latents differ from the init latents by %g (want 0), repainted ones by at most %g (want a change)", sched, strength, kept, changed)
			}
		}
	}
}

// blockEncoder is a deterministic stand-in for the legacy VAE encoders,
// which sample inside their graph: each latent is the mean of its 8×8
// block of one colour channel.
var blockEncoder = ImageEncoderFunc(func(_ context.Context, x *tensor.Dense) (*tensor.Dense, error) {
	s := x.Shape()
	h, w := s[2], s[3]
	d := x.Data().([]float32)
	lh, lw := h/8, w/8
	out := make([]float32, 4*lh*lw)
	for c := range 4 {
		for y := range lh {
			for xx := range lw {
				var sum float32
				for dy := range 8 {
					for dx := range 8 {
						sum += d[(c%3)*h*w+(8*y+dy)*w+8*xx+dx]
					}
				}
				out[c*lh*lw+y*lw+xx] = sum / 64 / 0.18215
			}
		}
	}
	return tensor.New(tensor.WithShape(1, 4, lh, lw), tensor.WithBacking(out)), nil
})

// TestInpaintSamePixelsUnderBatchingAndConcurrency runs masked requests
// (and, on the inpainting model, one without a mask) on the 9-channel and
// the 4-channel tiny models: each gives the same pixels alone, inside a
// dynamic batch, and among concurrent requests.
func TestInpaintSamePixelsUnderBatchingAndConcurrency(t *testing.T) {
	_, img, mask, dir := loadInpaintReference(t)
	nine := componentsFrom(t, dir)
	nine.UNetInChannels = nine.UNet.(*unet.Model).InChannels()
	nine.VAEEncoder = blockEncoder
	four := referenceComponents(t)
	four.VAEEncoder = blockEncoder
	other := image.NewGray(image.Rect(0, 0, 64, 64))
	for i := range other.Pix {
		if i%64 < 24 {
			other.Pix[i] = 255
		}
	}
	for name, c := range map[string]Components{"9 channels": nine, "4 channels": four} {
		t.Run(name, func(t *testing.T) {
			reqs := []Request{
				{Prompt: "a sofa", Steps: 4, Seed: 1, InitImage: img, Mask: mask},
				{Prompt: "a lamp", Steps: 4, Seed: 2, InitImage: img, Mask: other},
				{Prompt: "a rug", Steps: 4, Seed: 3, InitImage: img, Mask: mask, MaskFill: FillLatentNoise},
				{Prompt: "a cat", Steps: 4, Seed: 4, InitImage: img, Mask: other, Strength: 0.99},
			}
			if c.UNetInChannels == 9 {
				reqs = append(reqs, Request{Prompt: "a dog", Steps: 4, Seed: 5, Width: 64, Height: 64})
			}
			checkSameUnderBatching(t, c, reqs, 8)
		})
	}
}
