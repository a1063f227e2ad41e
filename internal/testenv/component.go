package testenv

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// OpenComponent opens dir/component/model.onnx with open (textenc.Open,
// unet.Open, vae.OpenDecoder, vae.OpenEncoder) and o, and closes it when
// the test ends (CloseAtEnd). It skips the test without ONNX Runtime and
// fails it when the component cannot be opened.
func OpenComponent[C interface{ Close() error }](t testing.TB, open func(context.Context, string, session.Options) (C, error), dir, component string, o session.Options) C {
	t.Helper()
	RequireORT(t)
	c, err := open(t.Context(), filepath.Join(dir, component, "model.onnx"), o)
	return CloseAtEnd(t, c, err)
}

// Folder is the models of a diffusers ONNX folder, opened for one test.
type Folder struct {
	Tokenizer   *tokenizer.CLIP
	TextEncoder *textenc.Model
	UNet        *unet.Model
	VAEDecoder  *vae.Decoder
	VAEEncoder  *vae.Encoder
}

// OpenFolder loads the tokenizer of the model folder dir and opens its
// text encoder, UNet and VAE halves on one thread each, closed when the
// test ends. It skips the test without ONNX Runtime.
func OpenFolder(t testing.TB, dir string) Folder {
	t.Helper()
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	o := session.Options{Threads: 1}
	return Folder{
		Tokenizer:   tok,
		TextEncoder: OpenComponent(t, textenc.Open, dir, "text_encoder", o),
		UNet:        OpenComponent(t, unet.Open, dir, "unet", o),
		VAEDecoder:  OpenComponent(t, vae.OpenDecoder, dir, "vae_decoder", o),
		VAEEncoder:  OpenComponent(t, vae.OpenEncoder, dir, "vae_encoder", o),
	}
}

// OpenReference opens the component of the tiny reference model
// (TinyReferenceModel) with open on one thread, as OpenComponent does.
func OpenReference[C interface{ Close() error }](t testing.TB, open func(context.Context, string, session.Options) (C, error), component string) C {
	t.Helper()
	return OpenComponent(t, open, TinyReferenceModel(t), component, session.Options{Threads: 1})
}
