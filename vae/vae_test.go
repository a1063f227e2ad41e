package vae_test

import (
	"errors"
	"math"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/vae"
)

func TestDecodeMatchesReference(t *testing.T) {
	ref := testenv.LoadTinyReference(t)
	d := testenv.OpenReference(t, vae.OpenDecoder, "vae_decoder")
	in := tensor.New(tensor.WithShape(1, 4, 8, 8), tensor.WithBacking(append([]float32(nil), ref.ORT.VAEDecoderInput...)))
	got, err := d.Decode(t.Context(), in)
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Shape(); s[1] != 3 || s[2] != 64 || s[3] != 64 {
		t.Errorf("shape %v", s)
	}
	if diff := testenv.MaxAbsDiff(got.Data().([]float32), ref.ORT.VAEDecoderOutput); diff > 1e-4 {
		t.Errorf("decoded pixels differ from the reference by %g", diff)
	}
	if _, err := d.Decode(t.Context(), tensor.New(tensor.WithShape(1, 3, 8, 8), tensor.WithBacking(make([]float32, 192)))); !errors.Is(err, vae.ErrInput) {
		t.Errorf("Decode(3 channels) = %v, want ErrInput", err)
	}
}

func TestEncodeStatistics(t *testing.T) {
	// The legacy export samples inside the graph, so only the statistics of
	// its output can be compared (reference.json's vae_encoder_check).
	e := testenv.OpenReference(t, vae.OpenEncoder, "vae_encoder")
	img := make([]float32, 3*64*64)
	for i := range img {
		img[i] = float32(math.Sin(float64(i))) // deterministic, in [-1, 1]
	}
	got, err := e.Encode(t.Context(), tensor.New(tensor.WithShape(1, 3, 64, 64), tensor.WithBacking(img)))
	if err != nil {
		t.Fatal(err)
	}
	if s := got.Shape(); s[0] != 1 || s[1] != 4 || s[2] != 8 || s[3] != 8 {
		t.Fatalf("shape %v, want [1 4 8 8]", s)
	}
	for _, v := range got.Data().([]float32) {
		if math.IsNaN(float64(v)) || math.Abs(float64(v)) > 100 {
			t.Fatalf("latent value %v is not sane", v)
		}
	}
	if _, err := e.Encode(t.Context(), tensor.New(tensor.WithShape(1, 3, 60, 64), tensor.WithBacking(make([]float32, 3*60*64)))); !errors.Is(err, vae.ErrInput) {
		t.Errorf("Encode(60x64) = %v, want ErrInput", err)
	}
}
