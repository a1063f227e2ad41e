package ckpt

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// recorder is a modelgen.Source that hands out RandomSource's parameters
// and keeps them.
type recorder struct {
	src modelgen.RandomSource
	mu  sync.Mutex
	got map[Component]map[string]*onnxpb.Tensor
}

func (r *recorder) Param(c modelgen.Component, name string, shape []int64, init modelgen.Init) (*onnxpb.Tensor, error) {
	t, err := r.src.Param(c, name, shape, init)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got[Component(c)] == nil {
		r.got[Component(c)] = map[string]*onnxpb.Tensor{}
	}
	r.got[Component(c)][name] = t
	return t, nil
}

// WriteOriginal writes a checkpoint of architecture a in the original
// (LDM) layout, every tensor named and shaped as a released file of that
// family has it (OriginalLayout, extras included), with the random weights
// modelgen.Write gives a model folder of cfg and seed (so that the
// checkpoint and that folder hold the same model), stored as dtype (F32,
// F16 or BF16). The extras hold what released files hold (the DDPM
// schedule of SD's scaled-linear betas, position_ids, model_ema.decay and
// num_updates); SD 2.x's unused last text layer gets random values. It
// writes one tensor at a time, so a full-size model needs little memory.
func WriteOriginal(path string, a *Arch, cfg modelgen.Config, seed uint64, dtype safetensors.DType) error {
	rec := &recorder{src: modelgen.RandomSource{Seed: seed}, got: map[Component]map[string]*onnxpb.Tensor{}}
	opt := modelgen.Options{Seed: seed, Source: rec}
	vocab := cfg.Text.Vocab
	builds := []func() (*onnxpb.Model, error){
		func() (*onnxpb.Model, error) { return modelgen.BuildTextEncoder(cfg, opt, vocab) },
		func() (*onnxpb.Model, error) { return modelgen.BuildUNet(cfg, opt) },
		func() (*onnxpb.Model, error) { return modelgen.BuildVAEDecoder(cfg, opt) },
		func() (*onnxpb.Model, error) { return modelgen.BuildVAEEncoder(cfg, opt) },
	}
	if cfg.Text2 != nil {
		builds = append(builds, func() (*onnxpb.Model, error) { return modelgen.BuildTextEncoder2(cfg, opt, cfg.Text2.Vocab) })
	}
	for _, b := range builds {
		if _, err := b(); err != nil {
			return err
		}
	}
	layout := OriginalLayout(a, dtype, true)
	infos := make([]safetensors.Info, len(layout))
	for i, s := range layout {
		infos[i] = safetensors.Info{Name: s.Name, DType: s.DType, Shape: s.Shape}
	}
	m, err := Convert(infos, a)
	if err != nil {
		return err
	}
	byKey := map[string][]placed{}
	for c, ps := range m.Params {
		for name, p := range ps {
			byKey[p.Key] = append(byKey[p.Key], placed{c, name, p})
		}
	}
	sched := ddpmSchedule()
	ws := make([]safetensors.WriteTensor, len(layout))
	for i, s := range layout {
		w := safetensors.WriteTensor{Name: s.Name, DType: s.DType, Shape: s.Shape}
		n := int64(1)
		for _, d := range s.Shape {
			n *= d
		}
		ps := byKey[s.Name]
		switch {
		case len(ps) > 0:
			for _, p := range ps {
				if rec.got[p.c][p.name] == nil {
					return fmt.Errorf("ckpt: the %s graphs did not ask for %s %s", cfg.Name, p.c, p.name)
				}
			}
			w.Fill = func(dst []byte) {
				vals := make([]float32, n)
				for _, p := range ps {
					t := rec.got[p.c][p.name]
					raw := make([]byte, t.NumElements()*4)
					t.Fill(raw)
					v := safetensors.ToFloat32(safetensors.F32, raw)
					switch {
					case p.p.Transpose:
						rows, cols := p.p.Shape[1], p.p.Shape[0]
						for r := int64(0); r < rows; r++ {
							for k := int64(0); k < cols; k++ {
								vals[r*cols+k] = v[k*rows+r]
							}
						}
					case p.p.Rows[1] > 0:
						copy(vals[p.p.Rows[0]*(n/s.Shape[0]):], v)
					default:
						copy(vals, v)
					}
				}
				copy(dst, safetensors.FromFloat32(s.DType, vals))
			}
		case s.DType == safetensors.I64: // position_ids
			w.Fill = func(dst []byte) {
				for j := range n {
					binary.LittleEndian.PutUint64(dst[8*j:], uint64(j))
				}
			}
		case s.DType == safetensors.I32: // model_ema.num_updates
			w.Fill = func(dst []byte) { binary.LittleEndian.PutUint32(dst, 0) }
		case sched[s.Name] != nil:
			w.Fill = func(dst []byte) { copy(dst, safetensors.FromFloat32(s.DType, sched[s.Name])) }
		case s.Name == "model_ema.decay":
			w.Fill = func(dst []byte) { copy(dst, safetensors.FromFloat32(s.DType, []float32{0.9999})) }
		default: // an unused tensor (SD 2.x's last text layer, logit_scale)
			t, err := modelgen.RandomSource{Seed: seed}.Param("", s.Name, s.Shape, modelgen.Init{Std: 0.02})
			if err != nil {
				return err
			}
			w.Fill = func(dst []byte) {
				raw := make([]byte, n*4)
				t.Fill(raw)
				copy(dst, safetensors.FromFloat32(s.DType, safetensors.ToFloat32(safetensors.F32, raw)))
			}
		}
		ws[i] = w
	}
	return safetensors.WriteFile(path, ws, nil)
}

// ddpmSchedule returns the buffers ldm's DDPM keeps for SD's schedule
// (scaled-linear betas from 0.00085 to 0.012 over 1000 steps, v-posterior
// 0), computed in float64 and rounded to float32 as ldm stores them.
func ddpmSchedule() map[string][]float32 {
	const n = 1000
	out := map[string][]float32{}
	f := func(name string, g func(i int) float64) {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(g(i))
		}
		out[name] = v
	}
	betas := make([]float64, n)
	ac := make([]float64, n)
	s0, s1 := math.Sqrt(0.00085), math.Sqrt(0.012)
	p := 1.0
	for i := range betas {
		b := s0 + (s1-s0)*float64(i)/float64(n-1)
		betas[i] = b * b
		p *= 1 - betas[i]
		ac[i] = p
	}
	prev := func(i int) float64 {
		if i == 0 {
			return 1
		}
		return ac[i-1]
	}
	f("betas", func(i int) float64 { return betas[i] })
	f("alphas_cumprod", func(i int) float64 { return ac[i] })
	f("alphas_cumprod_prev", prev)
	f("sqrt_alphas_cumprod", func(i int) float64 { return math.Sqrt(ac[i]) })
	f("sqrt_one_minus_alphas_cumprod", func(i int) float64 { return math.Sqrt(1 - ac[i]) })
	f("log_one_minus_alphas_cumprod", func(i int) float64 { return math.Log(1 - ac[i]) })
	f("sqrt_recip_alphas_cumprod", func(i int) float64 { return math.Sqrt(1 / ac[i]) })
	f("sqrt_recipm1_alphas_cumprod", func(i int) float64 { return math.Sqrt(1/ac[i] - 1) })
	post := func(i int) float64 { return betas[i] * (1 - prev(i)) / (1 - ac[i]) }
	f("posterior_variance", post)
	f("posterior_log_variance_clipped", func(i int) float64 { return math.Log(math.Max(post(i), 1e-20)) })
	f("posterior_mean_coef1", func(i int) float64 { return betas[i] * math.Sqrt(prev(i)) / (1 - ac[i]) })
	f("posterior_mean_coef2", func(i int) float64 { return (1 - prev(i)) * math.Sqrt(1-betas[i]) / (1 - ac[i]) })
	return out
}
