package pipeline

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/scheduler"
)

const sdSchedulerConfig = `{"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
"beta_start": 0.00085, "clip_sample": false, "num_train_timesteps": 1000, "prediction_type": "epsilon",
"set_alpha_to_one": false, "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": null}`

// fakeTokenizer maps each byte of the prompt to an id, padded to 77.
type fakeTokenizer struct{}

func (fakeTokenizer) Encode(text string) []int32 {
	ids := make([]int32, 77)
	ids[0] = 1
	for i := 1; i < 77; i++ {
		ids[i] = 2
		if i-1 < len(text) {
			ids[i] = int32(text[i-1]) + 3
		}
	}
	return ids
}

const fakeHidden = 8

// fakeEncoder embeds id k of row r as sin(k + j) for hidden unit j.
func fakeEncoder(delay time.Duration) Encoder {
	return EncoderFunc(func(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
		if err := sleep(ctx, delay); err != nil {
			return nil, err
		}
		seq := len(ids) / batch
		d := make([]float32, len(ids)*fakeHidden)
		for i, id := range ids {
			for h := range fakeHidden {
				d[i*fakeHidden+h] = float32(math.Sin(float64(id) + float64(h)))
			}
		}
		return tensor.New(tensor.WithShape(batch, seq, fakeHidden), tensor.WithBacking(d)), nil
	})
}

func sleep(ctx context.Context, d time.Duration) error {
	if d == 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// fakeUNet predicts 0.1·x + mean(cond)·0.01 + t/1e4, per item, after delay.
type fakeUNet struct {
	delay  time.Duration
	mu     sync.Mutex
	calls  int
	sizes  []int
	failOn float32 // fail when a cond row's mean equals this (to the float)
	block  chan struct{}
}

func (f *fakeUNet) Predict(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error) {
	s, c := sample.Shape(), cond.Shape()
	f.mu.Lock()
	f.calls++
	f.sizes = append(f.sizes, s[0])
	block := f.block
	f.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if err := sleep(ctx, f.delay); err != nil {
		return nil, err
	}
	x, e := sample.Data().([]float32), cond.Data().([]float32)
	n := s[1] * s[2] * s[3]
	m := c[1] * c[2]
	out := make([]float32, len(x))
	for b := range s[0] {
		var mean float32
		for _, v := range e[b*m : (b+1)*m] {
			mean += v
		}
		mean /= float32(m)
		if f.failOn != 0 && mean == f.failOn {
			return nil, errors.New("fake unet: poisoned prompt")
		}
		for i := range n {
			out[b*n+i] = 0.1*x[b*n+i] + 0.01*mean + float32(ts[0]/1e4)
		}
	}
	return tensor.New(tensor.WithShape(s...), tensor.WithBacking(out)), nil
}

// fakeDecoder upsamples the first 3 latent channels 8× with tanh.
func fakeDecoder(delay time.Duration) Decoder {
	return DecoderFunc(func(ctx context.Context, lat *tensor.Dense) (*tensor.Dense, error) {
		if err := sleep(ctx, delay); err != nil {
			return nil, err
		}
		s := lat.Shape()
		b, c, h, w := s[0], s[1], s[2], s[3]
		d := lat.Data().([]float32)
		out := make([]float32, b*3*h*8*w*8)
		for n := range b {
			for ch := range 3 {
				for y := range h * 8 {
					for x := range w * 8 {
						v := d[((n*c+ch)*h+y/8)*w+x/8]
						out[((n*3+ch)*h*8+y)*w*8+x] = float32(math.Tanh(float64(v)))
					}
				}
			}
		}
		return tensor.New(tensor.WithShape(b, 3, h*8, w*8), tensor.WithBacking(out)), nil
	})
}

func fakeImageEncoder() ImageEncoder {
	return ImageEncoderFunc(func(ctx context.Context, img *tensor.Dense) (*tensor.Dense, error) {
		s := img.Shape()
		h, w := s[2]/8, s[3]/8
		d := img.Data().([]float32)
		out := make([]float32, 4*h*w)
		for c := range 4 {
			for i := range h * w {
				out[c*h*w+i] = d[(c%3)*s[2]*s[3]+(i/w)*8*s[3]+(i%w)*8]
			}
		}
		return tensor.New(tensor.WithShape(1, 4, h, w), tensor.WithBacking(out)), nil
	})
}

func fakeComponents(t testing.TB, u *fakeUNet, delay time.Duration) Components {
	t.Helper()
	cfg, err := scheduler.ParseConfig([]byte(sdSchedulerConfig))
	if err != nil {
		t.Fatal(err)
	}
	return Components{
		Tokenizer:   fakeTokenizer{},
		TextEncoder: fakeEncoder(delay),
		UNet:        u,
		VAEDecoder:  fakeDecoder(delay),
		VAEEncoder:  fakeImageEncoder(),
		Scheduler:   cfg,
	}
}

// generateAll generates reqs on p at once, each from its own goroutine,
// and returns their results in reqs' order: nil for a request that failed,
// which fails the test.
func generateAll(t *testing.T, p *Pipeline, reqs []Request) []*Result {
	t.Helper()
	res := make([]*Result, len(reqs))
	var wg sync.WaitGroup
	for i, r := range reqs {
		wg.Go(func() {
			var err error
			if res[i], err = p.Generate(t.Context(), r); err != nil {
				t.Errorf("request %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	return res
}

func newFake(t testing.TB, u *fakeUNet, delay time.Duration, o Options) *Pipeline {
	t.Helper()
	if o.DefaultWidth == 0 {
		o.DefaultWidth, o.DefaultHeight = 64, 64
	}
	p, err := New(fakeComponents(t, u, delay), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
