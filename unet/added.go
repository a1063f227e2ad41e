package unet

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ort"
)

// Added is Stable Diffusion XL's added conditioning of a UNet call
// (addition_embed_type "text_time"), one row per batch row: TextEmbeds
// [batch, PooledDim()] (text_encoder_2's pooled text_embeds) and TimeIDs
// [batch, TimeIDsDim()] (original size, crop top-left and target size,
// each as height, width).
type Added struct {
	TextEmbeds, TimeIDs *tensor.Dense
	TimestepCond        *tensor.Dense // LCM's guidance embedding [batch, TimestepCondDim()]
}

// checkAdded checks the optional text_embeds and time_ids inputs: both or
// neither, float [batch, width] with fixed widths.
func (m *Signature) checkAdded(ins []ort.IOInfo, bad func(string, ...any) error) error {
	if (m.textEmbeds < 0) != (m.timeIDs < 0) {
		return bad("text_embeds and time_ids come together (SDXL); the model has one of them: %v", ins)
	}
	if m.textEmbeds < 0 {
		return nil
	}
	for _, x := range []struct {
		i   int
		dim *int
	}{{m.textEmbeds, &m.pooledDim}, {m.timeIDs, &m.timeIDsDim}} {
		v := ins[x.i]
		if !isFloat(v.DType) || len(v.Shape) != 2 || v.Shape[1] <= 0 {
			return bad("%s is %s%v, want float [batch, width] with a fixed width", v.Name, v.DType, v.Shape)
		}
		*x.dim = int(v.Shape[1])
	}
	return nil
}

// HasAdded reports whether the model takes SDXL's added conditioning
// (text_embeds and time_ids): it must then be called with PredictAdded.
func (m *Signature) HasAdded() bool { return m.textEmbeds >= 0 }

// PooledDim returns the width of text_embeds, or 0 for a model without it.
func (m *Signature) PooledDim() int { return m.pooledDim }

// TimeIDsDim returns the width of time_ids (6 for SDXL base: original
// size, crop top-left, target size), or 0 for a model without it.
func (m *Signature) TimeIDsDim() int { return m.timeIDsDim }

// exampleAdded returns added conditioning for example calls at latent size
// h×w: random pooled embeddings (zeros unless random) and the time ids of
// an uncropped image of that size; nil for a model without them.
func (m *Signature) exampleAdded(batch, h, w int, random bool, guidance float64) *Added {
	if m.timestepCond >= 0 {
		return &Added{TimestepCond: GuidanceEmbedding(guidance, m.condDim, batch)}
	}
	if !m.HasAdded() {
		return nil
	}
	r := rand.New(rand.NewPCG(3, 11))
	pe := make([]float32, batch*m.pooledDim)
	for i := range pe {
		if random {
			pe[i] = float32(r.NormFloat64())
		}
	}
	ti := make([]float32, batch*m.timeIDsDim)
	size := []float32{float32(8 * h), float32(8 * w), 0, 0, float32(8 * h), float32(8 * w)}
	for i := range ti {
		ti[i] = size[i%m.timeIDsDim%len(size)]
	}
	return &Added{
		TextEmbeds: tensor.New(tensor.WithShape(batch, m.pooledDim), tensor.WithBacking(pe)),
		TimeIDs:    tensor.New(tensor.WithShape(batch, m.timeIDsDim), tensor.WithBacking(ti)),
	}
}

// PredictAdded is Predict for a model that takes SDXL's added
// conditioning: textEmbeds [batch, PooledDim()] and timeIDs
// [batch, TimeIDsDim()], row for row with sample.
func (m *Model) PredictAdded(ctx context.Context, sample *tensor.Dense, ts []float64, context_, textEmbeds, timeIDs *tensor.Dense) (*tensor.Dense, error) {
	if !m.HasAdded() {
		return nil, fmt.Errorf("%w: the model takes no text_embeds and time_ids", ErrInput)
	}
	b := -1
	if ss := sample.Shape(); len(ss) == 4 {
		b = ss[0]
	}
	for _, x := range []struct {
		name string
		t    *tensor.Dense
		w    int
	}{{"text_embeds", textEmbeds, m.pooledDim}, {"time_ids", timeIDs, m.timeIDsDim}} {
		if x.t == nil {
			return nil, fmt.Errorf("%w: no %s", ErrInput, x.name)
		}
		if s := x.t.Shape(); len(s) != 2 || s[0] != b || s[1] != x.w {
			return nil, fmt.Errorf("%w: %s has shape %v, model wants [%d %d]", ErrInput, x.name, s, b, x.w)
		}
	}
	return m.predict(ctx, sample, ts, context_, &Added{TextEmbeds: textEmbeds, TimeIDs: timeIDs})
}

// checkTimestepCond checks the optional timestep_cond input of a latent
// consistency UNet: float [batch, width] with a fixed width, and not
// beside SDXL's added conditioning (LCM-SDXL is not supported).
func (m *Signature) checkTimestepCond(ins []ort.IOInfo, bad func(string, ...any) error) error {
	if m.timestepCond < 0 {
		return nil
	}
	v := ins[m.timestepCond]
	if !isFloat(v.DType) || len(v.Shape) != 2 || v.Shape[1] <= 0 {
		return bad("timestep_cond is %s%v, want float [batch, width] with a fixed width", v.DType, v.Shape)
	}
	if m.textEmbeds >= 0 {
		return bad("timestep_cond beside text_embeds and time_ids (LCM-SDXL) is not supported")
	}
	m.condDim = int(v.Shape[1])
	return nil
}

// TimestepCondDim returns the width of a latent consistency UNet's
// timestep_cond input (its time_cond_proj_dim), or 0 for a model without
// it: such a model is called with PredictCond and takes guidance as this
// embedding instead of classifier-free guidance.
func (m *Signature) TimestepCondDim() int { return max(m.condDim, 0) }

// PredictCond is Predict for a latent consistency UNet: timestepCond is
// [batch, TimestepCondDim()], row for row with sample (see
// GuidanceEmbedding).
func (m *Model) PredictCond(ctx context.Context, sample *tensor.Dense, ts []float64, context_, timestepCond *tensor.Dense) (*tensor.Dense, error) {
	if m.timestepCond < 0 {
		return nil, fmt.Errorf("%w: the model takes no timestep_cond", ErrInput)
	}
	b := -1
	if ss := sample.Shape(); len(ss) == 4 {
		b = ss[0]
	}
	if timestepCond == nil {
		return nil, fmt.Errorf("%w: no timestep_cond", ErrInput)
	}
	if s := timestepCond.Shape(); len(s) != 2 || s[0] != b || s[1] != m.condDim {
		return nil, fmt.Errorf("%w: timestep_cond has shape %v, model wants [%d %d]", ErrInput, s, b, m.condDim)
	}
	return m.predict(ctx, sample, ts, context_, &Added{TimestepCond: timestepCond})
}

// GuidanceEmbedding returns rows copies of the guidance-scale embedding a
// latent consistency model takes as timestep_cond, as diffusers'
// LatentConsistencyModelPipeline.get_guidance_scale_embedding computes it
// for w = guidance − 1 (in float32): with half = dim/2 and
// f_k = exp(−k·ln(10000)/(half−1)), the row is sin(1000·w·f_k) for k < half,
// then cos(1000·w·f_k), zero-padded to an odd dim.
func GuidanceEmbedding(guidance float64, dim, rows int) *tensor.Dense {
	row := make([]float32, dim)
	half := dim / 2
	if half > 0 {
		w := float32(guidance-1) * 1000
		step := float32(math.Log(10000)) / float32(max(half-1, 1))
		for k := range half {
			f := float32(math.Exp(float64(float32(k) * -step)))
			x := float64(w * f)
			row[k] = float32(math.Sin(x))
			row[half+k] = float32(math.Cos(x))
		}
	}
	d := make([]float32, 0, rows*dim)
	for range rows {
		d = append(d, row...)
	}
	return tensor.New(tensor.WithShape(rows, dim), tensor.WithBacking(d))
}
