package modelgen

import (
	"fmt"
	"math"
	"strconv"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// TAESDConfig sizes the tiny autoencoder TAESD (madebyollin/taesd, as
// diffusers' AutoencoderTiny): an encoder of Conv/ReLU blocks that maps an
// image straight to scaled latents and a decoder back, each of a few MB.
type TAESDConfig struct {
	Name string
	// Channels is the width of every block (encoder_block_out_channels and
	// decoder_block_out_channels, all equal in the released models: 64).
	Channels       int
	LatentChannels int
	// EncoderBlocks and DecoderBlocks are num_encoder_blocks (1, 3, 3, 3)
	// and num_decoder_blocks (3, 3, 3, 1): per level, the number of
	// AutoencoderTinyBlocks; the encoder halves the size before each level
	// but the first, the decoder doubles it after each level but the last.
	EncoderBlocks []int
	DecoderBlocks []int
}

// FullTAESD returns the released TAESD / TAESDXL architecture (diffusers'
// AutoencoderTiny defaults): 64 channels, 4 latent channels, blocks
// (1, 3, 3, 3) and (3, 3, 3, 1): 1,222,532 encoder and 1,222,531 decoder
// parameters.
func FullTAESD() TAESDConfig {
	return TAESDConfig{Name: "taesd", Channels: 64, LatentChannels: 4, EncoderBlocks: []int{1, 3, 3, 3}, DecoderBlocks: []int{3, 3, 3, 1}}
}

// TinyTAESD is a TAESD of 16 channels and one block per level.
func TinyTAESD() TAESDConfig {
	return TAESDConfig{Name: "tiny-taesd", Channels: 16, LatentChannels: 4, EncoderBlocks: []int{1, 1, 1, 1}, DecoderBlocks: []int{1, 1, 1, 1}}
}

// TAESDConfigByName returns FullTAESD() for "taesd" and TinyTAESD() for
// "tiny-taesd".
func TAESDConfigByName(name string) (TAESDConfig, error) {
	for _, c := range []TAESDConfig{FullTAESD(), TinyTAESD()} {
		if c.Name == name {
			return c, nil
		}
	}
	return TAESDConfig{}, fmt.Errorf("modelgen: unknown TAESD config %q (want taesd or tiny-taesd)", name)
}

func (c TAESDConfig) validate() error {
	if c.Channels <= 0 || c.LatentChannels <= 0 || len(c.EncoderBlocks) == 0 || len(c.DecoderBlocks) == 0 {
		return fmt.Errorf("modelgen: TAESD config %q: bad sizes %+v", c.Name, c)
	}
	for _, n := range append(append([]int{}, c.EncoderBlocks...), c.DecoderBlocks...) {
		if n < 0 {
			return fmt.Errorf("modelgen: TAESD config %q: negative block count", c.Name)
		}
	}
	return nil
}

// relu gain keeps the variance of ReLU layers' outputs.
var reluGain = math.Sqrt(2)

// taesdBlock is AutoencoderTinyBlock with equal channels: ReLU(conv.4(ReLU(
// conv.2(ReLU(conv.0(x))))) + x).
func (b *Builder) taesdBlock(x, name string, c int) string {
	h := b.Op("Relu", []string{b.conv(x, name+".conv.0", c, c, 3, 1, 1, reluGain)})
	h = b.Op("Relu", []string{b.conv(h, name+".conv.2", c, c, 3, 1, 1, reluGain)})
	h = b.conv(h, name+".conv.4", c, c, 3, 1, 1, residualGain)
	return b.Op("Relu", []string{b.Op("Add", []string{h, x})})
}

// newTAESDBuilder checks tc and opt and starts a builder for a half of
// TAESD, whose files have the legacy layout.
func newTAESDBuilder(tc TAESDConfig, opt Options) (*Builder, error) {
	if err := tc.validate(); err != nil {
		return nil, err
	}
	if err := opt.validate(); err != nil {
		return nil, err
	}
	opt.Layout = Legacy
	return NewSourceBuilder(opt.source(), TAESD, opt.floatType(), opt.OnModule)
}

// BuildTAESDEncoder returns TAESD's encoder (component TAESD, keys
// "encoder.layers.N…" as diffusers' AutoencoderTiny; madebyollin's
// taesd_encoder.pth has the same keys without "encoder.layers."): sample
// [batch, 3, height, width] in [-1, 1] → latent_sample [batch, 4,
// height/8, width/8], the scaled latents the UNet works on (scaling factor
// 1). Options.Seed, FP16, Batch, Source and OnModule apply.
func BuildTAESDEncoder(tc TAESDConfig, opt Options) (*onnxpb.Model, error) {
	b, err := newTAESDBuilder(tc, opt)
	if err != nil {
		return nil, err
	}
	ft, batch, c := b.Float(), opt.batchDim(), tc.Channels
	x := b.Input("sample", ft, batch, 3, "height", "width")
	// [-1, 1] → [0, 1], as AutoencoderTiny's encoder does.
	h := b.Op("Div", []string{b.Op("Add", []string{x, b.Scalar(1)}), b.Scalar(2)})
	n := 0
	layer := func() string { n++; return "encoder.layers." + strconv.Itoa(n-1) }
	for i, blocks := range tc.EncoderBlocks {
		if i == 0 {
			h = b.conv(h, layer(), 3, c, 3, 1, 1, 1)
		} else {
			h = b.convFull(h, layer(), c, c, 3, 2, []int64{1, 1, 1, 1}, 1, false)
		}
		for range blocks {
			h = b.taesdBlock(h, layer(), c)
		}
	}
	h = b.conv(h, layer(), c, tc.LatentChannels, 3, 1, 1, 1)
	b.Output(h, "latent_sample", ft, batch, tc.LatentChannels, "latent_height", "latent_width")
	return b.finish()
}

// BuildTAESDDecoder returns TAESD's decoder (component TAESD, keys
// "decoder.layers.N…"; madebyollin's taesd_decoder.pth numbers them one
// higher, its layer 0 being the clamp): latent_sample [batch, 4, h, w] (the
// scaled latents) → sample [batch, 3, 8h, 8w] in [-1, 1]: tanh(z/3)·3,
// conv, ReLU, blocks with nearest ×2 upsampling and convs, then ·2 − 1.
func BuildTAESDDecoder(tc TAESDConfig, opt Options) (*onnxpb.Model, error) {
	b, err := newTAESDBuilder(tc, opt)
	if err != nil {
		return nil, err
	}
	ft, batch, c := b.Float(), opt.batchDim(), tc.Channels
	z := b.Input("latent_sample", ft, batch, tc.LatentChannels, "latent_height", "latent_width")
	h := b.Op("Mul", []string{b.Op("Tanh", []string{b.Op("Div", []string{z, b.Scalar(3)})}), b.Scalar(3)})
	n := 0
	layer := func() string { n++; return "decoder.layers." + strconv.Itoa(n-1) }
	h = b.Op("Relu", []string{b.conv(h, layer(), tc.LatentChannels, c, 3, 1, 1, reluGain)})
	n++ // the ReLU is layer 1
	last := len(tc.DecoderBlocks) - 1
	for i, blocks := range tc.DecoderBlocks {
		for range blocks {
			h = b.taesdBlock(h, layer(), c)
		}
		if i < last {
			n++ // nn.Upsample
			h = b.Op("Resize", []string{h, "", b.upsampleScales()},
				AttrString("mode", "nearest"),
				AttrString("coordinate_transformation_mode", "asymmetric"),
				AttrString("nearest_mode", "floor"))
			h = b.convFull(h, layer(), c, c, 3, 1, []int64{1, 1, 1, 1}, 1, false)
		} else {
			h = b.conv(h, layer(), c, 3, 3, 1, 1, 1)
		}
	}
	out := b.Op("Sub", []string{b.Op("Mul", []string{h, b.Scalar(2)}), b.Scalar(1)})
	b.Output(out, "sample", ft, batch, 3, "height", "width")
	return b.finish()
}
