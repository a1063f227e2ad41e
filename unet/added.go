package unet

import (
	"context"
	"fmt"
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
func (m *Signature) exampleAdded(batch, h, w int, random bool) *Added {
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
