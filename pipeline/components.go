package pipeline

import (
	"context"
	"fmt"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// Tokenizer turns a prompt into token ids. Implementations must be safe for
// concurrent use.
type Tokenizer interface {
	// Encode returns the ids of one padded, truncated sequence (BOS,
	// content, EOS, padding), as Stable Diffusion pipelines feed the text
	// encoder.
	Encode(text string) []int32
}

// WeightedTokenizer is a Tokenizer that also understands AUTOMATIC1111's
// prompt syntax: emphasis weights, BREAK, and prompts longer than one
// sequence, split into chunks. *tokenizer.CLIP implements it.
type WeightedTokenizer interface {
	Tokenizer
	EncodeWeighted(prompt string) (*tokenizer.Prompt, error)
	PadChunks(prompts ...*tokenizer.Prompt)
}

// Encoder is the text encoder: ids holds batch rows of equal length, and the
// result is [batch, sequence, hidden]. Implementations must be safe for
// concurrent use.
type Encoder interface {
	Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error)
}

// EncoderFunc adapts a function to Encoder.
type EncoderFunc func(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error)

// Encode calls f.
func (f EncoderFunc) Encode(ctx context.Context, ids []int32, batch int) (*tensor.Dense, error) {
	return f(ctx, ids, batch)
}

// Denoiser is the UNet: it predicts noise for sample [batch, c, h, w] at
// timesteps ts (one for the whole batch, or one per item) given the text
// embeddings cond [batch, sequence, hidden]. Implementations must be safe
// for concurrent use.
type Denoiser interface {
	Predict(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error)
}

// DenoiserFunc adapts a function to Denoiser.
type DenoiserFunc func(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error)

// Predict calls f.
func (f DenoiserFunc) Predict(ctx context.Context, sample *tensor.Dense, ts []float64, cond *tensor.Dense) (*tensor.Dense, error) {
	return f(ctx, sample, ts, cond)
}

// Decoder is the VAE decoder: latents [batch, c, h, w] (already divided by
// the scaling factor) to pixels [batch, 3, 8h, 8w] in about [-1, 1].
// Implementations must be safe for concurrent use.
type Decoder interface {
	Decode(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error)
}

// DecoderFunc adapts a function to Decoder.
type DecoderFunc func(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error)

// Decode calls f.
func (f DecoderFunc) Decode(ctx context.Context, latents *tensor.Dense) (*tensor.Dense, error) {
	return f(ctx, latents)
}

// ImageEncoder is the VAE encoder: pixels [batch, 3, H, W] in [-1, 1] to
// latents [batch, c, H/8, W/8], not yet multiplied by the scaling factor.
// Implementations must be safe for concurrent use.
type ImageEncoder interface {
	Encode(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error)
}

// ImageEncoderFunc adapts a function to ImageEncoder.
type ImageEncoderFunc func(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error)

// Encode calls f.
func (f ImageEncoderFunc) Encode(ctx context.Context, image *tensor.Dense) (*tensor.Dense, error) {
	return f(ctx, image)
}

// PooledEncoder is a text encoder that also returns one pooled embedding
// per sequence, [batch, width] (Stable Diffusion XL: text_encoder_2's
// text_embeds), beside the hidden states. ids2, when not nil, are the
// same sequences as Components.Tokenizer2 tokenizes them, for a second
// encoder; nil leaves them to the encoder (SDXL: ids with the second
// tokenizer's padding). Implementations must be safe for concurrent use.
type PooledEncoder interface {
	Encoder
	EncodePooled(ctx context.Context, ids, ids2 []int32, batch int) (hidden, pooled *tensor.Dense, err error)
}

// SplitEncoder is an Encoder whose hidden states concatenate those of
// several encoders along the hidden axis (SDXL: text_encoder's, then
// text_encoder_2's). HiddenParts returns their widths, or nil when unknown.
// Emphasis weights then restore each part's mean on its own, as
// AUTOMATIC1111 does per embedder.
type SplitEncoder interface {
	Encoder
	HiddenParts() []int
}

// AddedDenoiser is a UNet that takes Stable Diffusion XL's added
// conditioning besides the text embeddings, row for row with sample:
// textEmbeds [batch, width] (the pooled embeddings) and timeIDs
// [batch, 6] (original size, crop top-left, target size, each as height,
// width). Implementations must be safe for concurrent use.
type AddedDenoiser interface {
	Denoiser
	PredictAdded(ctx context.Context, sample *tensor.Dense, ts []float64, cond, textEmbeds, timeIDs *tensor.Dense) (*tensor.Dense, error)
}

// CondDenoiser is a latent consistency UNet: instead of classifier-free
// guidance it takes the guidance scale as an embedding, timestepCond
// [batch, GuidanceEmbedding] row for row with sample (see
// Components.GuidanceEmbedding). Implementations must be safe for
// concurrent use.
type CondDenoiser interface {
	Denoiser
	PredictCond(ctx context.Context, sample *tensor.Dense, ts []float64, cond, timestepCond *tensor.Dense) (*tensor.Dense, error)
}

// Components are the models and configuration a Pipeline runs. The
// pipeline does not own them: the caller closes them after the pipeline.
type Components struct {
	Tokenizer Tokenizer
	// Tokenizer2 is a second tokenizer (SDXL's tokenizer_2), optional:
	// literal prompts (Request.LiteralPrompt) are also tokenized with it
	// for a PooledEncoder, as diffusers does; prompts in AUTOMATIC1111's
	// syntax are not, as in AUTOMATIC1111.
	Tokenizer2  Tokenizer
	TextEncoder Encoder
	UNet        Denoiser
	VAEDecoder  Decoder
	VAEEncoder  ImageEncoder // optional: needed for img2img only
	// PreviewDecoder, optional, renders the live previews of requests that
	// ask for them (Request.Preview) every Options.PreviewEvery steps, off
	// the denoise stage's path (preview.go): a tiny decoder such as TAESD
	// that takes the latents as the UNet has them (not divided by
	// ScalingFactor) and gives [batch, 3, 8h, 8w] pixels in about [-1, 1].
	// Without it previews are the cheap latent-to-RGB map.
	PreviewDecoder Decoder
	// FastDecoder, optional, decodes the final images of requests that ask
	// for it (Request.FastDecode) instead of VAEDecoder; it takes latents
	// as PreviewDecoder does (TAESD).
	FastDecoder Decoder

	Scheduler      *scheduler.Config // the model's scheduler_config.json
	ScalingFactor  float64           // VAE scaling factor; 0 means 0.18215
	LatentChannels int               // 0 means 4
	// UNetInChannels is the UNet's sample channels: 0 means
	// LatentChannels; 2·LatentChannels+1 (9) is an inpainting UNet, which
	// takes the mask and the masked image's latents after the latents.
	UNetInChannels int
	// UNetTimestepPerItem reports that the UNet takes one timestep per batch
	// item; when false, only requests at the same timestep share a call
	// (they always do: batched requests run in lockstep).
	UNetTimestepPerItem bool
	// Added turns on Stable Diffusion XL's added conditioning: the
	// TextEncoder must be a PooledEncoder and the UNet an AddedDenoiser,
	// which gets each row's pooled embedding and time ids.
	Added bool
	// ZeroEmptyNegative is diffusers' force_zeros_for_empty_prompt: an
	// empty NegativePrompt gives all-zero negative embeddings (hidden
	// states and pooled) instead of the empty prompt's.
	ZeroEmptyNegative bool
	// GuidanceEmbedding is the width of a latent consistency UNet's
	// timestep_cond (time_cond_proj_dim), 0 for other models. The UNet
	// must then be a CondDenoiser: each request's guidance scale goes in
	// as diffusers' guidance-scale embedding of GuidanceScale − 1 (the
	// embed argument, see LatentConsistencyModelPipeline), and no request
	// runs classifier-free guidance.
	GuidanceEmbedding int
	// Embed returns rows copies of the embedding of guidance; required
	// with GuidanceEmbedding.
	Embed func(guidance float64, dim, rows int) *tensor.Dense
}

func (c *Components) check() error {
	switch {
	case c.Tokenizer == nil:
		return fmt.Errorf("pipeline: no tokenizer")
	case c.TextEncoder == nil:
		return fmt.Errorf("pipeline: no text encoder")
	case c.UNet == nil:
		return fmt.Errorf("pipeline: no unet")
	case c.VAEDecoder == nil:
		return fmt.Errorf("pipeline: no vae decoder")
	case c.Scheduler == nil:
		return fmt.Errorf("pipeline: no scheduler config")
	case c.Added && !isPooled(c.TextEncoder):
		return fmt.Errorf("pipeline: added conditioning needs a text encoder with pooled embeddings (PooledEncoder)")
	case c.Added && !isAdded(c.UNet):
		return fmt.Errorf("pipeline: added conditioning needs a unet that takes it (AddedDenoiser)")
	case c.GuidanceEmbedding > 0 && (!isCond(c.UNet) || c.Embed == nil):
		return fmt.Errorf("pipeline: a guidance embedding needs a unet that takes it (CondDenoiser) and Embed")
	case c.GuidanceEmbedding > 0 && c.Added:
		return fmt.Errorf("pipeline: a guidance embedding beside added conditioning (LCM-SDXL) is not supported")
	case c.ScalingFactor < 0:
		return fmt.Errorf("pipeline: negative scaling factor %g", c.ScalingFactor)
	}
	if c.ScalingFactor == 0 {
		c.ScalingFactor = 0.18215
	}
	if c.LatentChannels == 0 {
		c.LatentChannels = 4
	}
	if c.UNetInChannels == 0 {
		c.UNetInChannels = c.LatentChannels
	}
	if c.UNetInChannels != c.LatentChannels && c.UNetInChannels != 2*c.LatentChannels+1 {
		return fmt.Errorf("pipeline: a UNet of %d input channels for %d latent channels (want %d, or %d for inpainting)",
			c.UNetInChannels, c.LatentChannels, c.LatentChannels, 2*c.LatentChannels+1)
	}
	return nil
}

func isPooled(e Encoder) bool { _, ok := e.(PooledEncoder); return ok }
func isAdded(d Denoiser) bool { _, ok := d.(AddedDenoiser); return ok }

func isCond(d Denoiser) bool {
	_, ok := d.(CondDenoiser)
	return ok
}
