package sd

import (
	"fmt"
	"strings"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// fixedDim returns dimension i of v when the model fixes it, else 0.
func fixedDim(v onnxpb.ValueInfo, i int) int {
	if i < len(v.Dims) && v.Dims[i].Param == "" && v.Dims[i].Value > 0 {
		return int(v.Dims[i].Value)
	}
	return 0
}

// initializerRows returns the first dimension of the 2-d initializer whose
// name ends in suffix, or 0 when there is none.
func initializerRows(io *onnxpb.IO, suffix string) int {
	for _, t := range io.Initializers {
		if strings.HasSuffix(t.Name, suffix) && len(t.Dims) == 2 && t.Dims[0] > 0 {
			return int(t.Dims[0])
		}
	}
	return 0
}

// crossCheck compares the dimensions the components declare. Only fixed
// dimensions are compared; a model whose inputs or outputs have other names
// is left to its package's signature check.
func (in *inspector) crossCheck(lay *layout) {
	mismatch := func(c Component, format string, args ...any) {
		in.fail(c.String()+"/"+modelFile, &problem{msg: fmt.Sprintf(format, args...), err: ErrMismatch})
	}
	var hidden, seq, cross, unetOut int
	if te := lay.io[TextEncoder]; te != nil {
		if v, ok := te.Output("last_hidden_state"); ok {
			hidden = fixedDim(v, 2)
		}
		if v, ok := te.Input("input_ids"); ok {
			seq = fixedDim(v, 1)
		}
		if tok := lay.tok; tok != nil {
			if n := initializerRows(te, "token_embedding.weight"); n > 0 && n < tok.VocabSize() {
				mismatch(TextEncoder, "token embedding has %d rows, fewer than the %d tokens of %s/vocab.json", n, tok.VocabSize(), tokenizerDir)
			}
			if n := initializerRows(te, "position_embedding.weight"); n > 0 && n < tok.MaxLength() {
				mismatch(TextEncoder, "position embedding has %d rows, fewer than the tokenizer's %d tokens per prompt", n, tok.MaxLength())
			}
			if seq > 0 && seq != tok.MaxLength() {
				mismatch(TextEncoder, "input_ids has a fixed length of %d tokens, the tokenizer gives %d", seq, tok.MaxLength())
			}
		}
	}
	if u := lay.io[UNet]; u != nil {
		if v, ok := u.Input("encoder_hidden_states"); ok {
			cross = fixedDim(v, 2)
		}
		if len(u.Outputs) > 0 {
			unetOut = fixedDim(u.Outputs[0], 1)
		}
		if v, ok := u.Input("encoder_hidden_states"); ok && seq > 0 {
			if n := fixedDim(v, 1); n > 0 && n != seq {
				mismatch(UNet, "encoder_hidden_states has a fixed length of %d tokens, the text encoder (%s/%s) gives %d", n, TextEncoder, modelFile, seq)
			}
		}
	}
	if hidden > 0 && cross > 0 && hidden != cross {
		mismatch(UNet, "encoder_hidden_states is %d wide, the text encoder (%s/%s) gives hidden states of %d", cross, TextEncoder, modelFile, hidden)
	}
	if d := lay.io[VAEDecoder]; d != nil && unetOut > 0 {
		if v, ok := d.Input("latent_sample"); ok {
			if n := fixedDim(v, 1); n > 0 && n != unetOut {
				mismatch(VAEDecoder, "latent_sample has %d channels, the UNet (%s/%s) predicts %d", n, UNet, modelFile, unetOut)
			}
		}
	}
	if e := lay.io[VAEEncoder]; e != nil && unetOut > 0 && len(e.Outputs) > 0 {
		out := e.Outputs[0]
		n := fixedDim(out, 1)
		if out.Name == "latent_parameters" {
			n /= 2 // mean ‖ logvar
		}
		if n > 0 && n != unetOut {
			mismatch(VAEEncoder, "%s has %d latent channels, the UNet (%s/%s) predicts %d", out.Name, n, UNet, modelFile, unetOut)
		}
	}
}
