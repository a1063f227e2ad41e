package modelgen

import (
	"os"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestSD15Runs writes the full SD 1.5-size folder (about 4.3 GB, half a
// minute) and runs each component once at 64×64. It is opt-in: set
// SDGEN_SD15=1, or SDGEN_SD15_DIR to an existing folder written by sdgen.
func TestSD15Runs(t *testing.T) {
	dir := os.Getenv("SDGEN_SD15_DIR")
	if dir == "" && os.Getenv("SDGEN_SD15") == "" {
		t.Skip("set SDGEN_SD15=1 (writes ~4.3 GB) or SDGEN_SD15_DIR=folder to run the SD 1.5-size model")
	}
	testenv.RequireORT(t)
	cfg := SD15()
	if dir == "" {
		dir = t.TempDir()
		if err := Write(dir, cfg, Options{}); err != nil {
			t.Fatal(err)
		}
	}
	vocab := GenerateVocabulary(0).Size()
	ids, _ := promptIDs(vocab, 5)
	te := openComponent(t, dir, TextEncoderDir)
	out := []ort.Tensor{{Shape: []int64{1, 77, 768}}, {Shape: []int64{1, 768}}}
	if err := te.Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 77}, Data: ids}}, out); err != nil {
		t.Fatal(err)
	}
	_, std := stats(t, "last_hidden_state", out[0].Data.([]float32))
	t.Logf("text encoder: last_hidden_state std %.3g", std)

	un := openComponent(t, dir, UNetDir)
	eps := runUNet(t, un, gauss(1, 4*8*8), 981, out[0].Data.([]float32), 1, 8, 77, 768)
	_, std = stats(t, "out_sample", eps)
	t.Logf("unet: out_sample std %.3g", std)
	if std < 0.3 || std > 3 {
		t.Errorf("out_sample std %.3g outside [0.3, 3]", std)
	}

	img := []ort.Tensor{{Shape: []int64{1, 3, 64, 64}}}
	if err := openComponent(t, dir, VAEDecoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: gauss(2, 256)}}, img); err != nil {
		t.Fatal(err)
	}
	_, std = stats(t, "decoded", img[0].Data.([]float32))
	t.Logf("vae decoder: sample std %.3g", std)
	lat := []ort.Tensor{{Shape: []int64{1, 4, 8, 8}}}
	if err := openComponent(t, dir, VAEEncoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 3, 64, 64}, Data: img[0].Data}}, lat); err != nil {
		t.Fatal(err)
	}
	_, std = stats(t, "latents", lat[0].Data.([]float32))
	t.Logf("vae encoder: latent std %.3g", std)
}
