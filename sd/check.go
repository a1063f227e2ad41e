package sd

import (
	"fmt"

	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// crossCheck compares what the components' signatures declare. Only what
// the models fix is compared (a zero means the model leaves it dynamic).
func (in *inspector) crossCheck(lay *layout) {
	mismatch := func(c Component, format string, args ...any) {
		in.fail(c.String()+"/"+modelFile, &problem{msg: fmt.Sprintf(format, args...), err: ErrMismatch})
	}
	te, _ := lay.sigs[TextEncoder].(*textenc.Signature)
	un, _ := lay.sigs[UNet].(*unet.Signature)
	dec, _ := lay.sigs[VAEDecoder].(*vae.DecoderSignature)
	enc, _ := lay.sigs[VAEEncoder].(*vae.EncoderSignature)
	var hidden, seq int
	if te != nil {
		hidden, seq = te.HiddenSize(), te.SequenceLength()
		if tok := lay.tok; tok != nil {
			if n := te.VocabSize(); n > 0 && n < tok.VocabSize() {
				mismatch(TextEncoder, "token embedding has %d rows, fewer than the %d tokens of %s/vocab.json", n, tok.VocabSize(), tokenizerDir)
			}
			if n := te.Positions(); n > 0 && n < tok.MaxLength() {
				mismatch(TextEncoder, "position embedding has %d rows, fewer than the tokenizer's %d tokens per prompt", n, tok.MaxLength())
			}
			if seq > 0 && seq != tok.MaxLength() {
				mismatch(TextEncoder, "input_ids has a fixed length of %d tokens, the tokenizer gives %d", seq, tok.MaxLength())
			}
		}
	}
	if un == nil {
		return
	}
	if n := un.SequenceLength(); n > 0 && seq > 0 && n != seq {
		mismatch(UNet, "encoder_hidden_states has a fixed length of %d tokens, the text encoder (%s/%s) gives %d", n, TextEncoder, modelFile, seq)
	}
	if lay.xl != nil {
		if h := xlHidden(te, lay.xl); h > 0 && un.CrossDim() > 0 && h != un.CrossDim() {
			mismatch(UNet, "encoder_hidden_states is %d wide, the text encoders (%s, %s) give %d + %d", un.CrossDim(), TextEncoder, textEncoder2, te.HiddenSize(), lay.xl.te.HiddenSize())
		}
	} else if cross := un.CrossDim(); hidden > 0 && cross > 0 && hidden != cross {
		mismatch(UNet, "encoder_hidden_states is %d wide, the text encoder (%s/%s) gives hidden states of %d", cross, TextEncoder, modelFile, hidden)
	}
	out := un.OutChannels()
	if dec != nil && dec.LatentChannels() != out {
		mismatch(VAEDecoder, "latent_sample has %d channels, the UNet (%s/%s) predicts %d", dec.LatentChannels(), UNet, modelFile, out)
	}
	if enc != nil && enc.LatentChannels() != out {
		mismatch(VAEEncoder, "%s has %d latent channels, the UNet (%s/%s) predicts %d", enc.Output(), enc.LatentChannels(), UNet, modelFile, out)
	}
}
