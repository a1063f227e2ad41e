package modelgen

import (
	"testing"
)

// TestSD15ParamCounts checks the SD 1.5 configuration against the published
// parameter counts of the diffusers/transformers modules, by summing
// initializer sizes (no tensor data is generated).
func TestSD15ParamCounts(t *testing.T) {
	cfg := SD15()
	var opt Options
	te, err := BuildTextEncoder(cfg, opt, 0)
	if err != nil {
		t.Fatal(err)
	}
	un, err := BuildUNet(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := BuildVAEDecoder(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	enc, err := BuildVAEEncoder(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		got  int64
		want int64
	}{
		{"text encoder (CLIPTextModel)", CountParams(te), 123_060_480},
		{"unet (UNet2DConditionModel)", CountParams(un), 859_520_964},
		{"vae (AutoencoderKL, encoder+decoder)", CountParams(enc) + CountParams(dec), 83_653_863},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: %d parameters, want %d", tt.name, tt.got, tt.want)
		}
	}
	t.Logf("vae decoder %d, encoder %d", CountParams(dec), CountParams(enc))
}
