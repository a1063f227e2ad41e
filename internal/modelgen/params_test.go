package modelgen

import (
	"testing"
)

// TestParamCounts checks the full-size configurations against the
// parameter counts of the real diffusers/transformers modules, by summing
// initializer sizes (no tensor data is generated). The counts are those of
// the published checkpoints: SD 1.5 (runwayml), its inpainting UNet, SD 2.1
// (stabilityai, 768-v), SDXL base 1.0 and LCM Dreamshaper v7.
func TestParamCounts(t *testing.T) {
	tests := []struct {
		cfg                  Config
		text, text2, un, vae int64
	}{
		{SD15(), 123_060_480, 0, 859_520_964, 83_653_863},
		{SD15Inpaint(), 123_060_480, 0, 859_535_364, 83_653_863},
		{SD21(), 340_387_840, 0, 865_910_724, 83_653_863},
		{SDXL(), 123_060_480, 694_659_840, 2_567_463_684, 83_653_863},
		{LCMSD15(), 123_060_480, 0, 859_602_884, 83_653_863},
	}
	for _, tt := range tests {
		t.Run(tt.cfg.Name, func(t *testing.T) {
			g := buildAll(t, tt.cfg, Options{}, 0)
			check := func(what string, got, want int64) {
				if got != want {
					t.Errorf("%s: %d parameters, want %d", what, got, want)
				}
			}
			check("text encoder", CountParams(g.text), tt.text)
			check("unet", CountParams(g.unet), tt.un)
			check("vae (encoder+decoder)", CountParams(g.vaeEnc)+CountParams(g.vaeDec), tt.vae)
			if tt.text2 > 0 {
				check("text encoder 2", CountParams(g.text2), tt.text2)
			}
		})
	}
}

// TestTAESDParamCounts checks the TAESD architecture's size, counted from
// diffusers' AutoencoderTiny with its default (released) configuration:
// encoder 1792 + 110,784 + 3·(36,864 + 3·110,784) + 2308, decoder 2368 +
// 3·(3·110,784 + 36,864) + 110,784 + 1731.
func TestTAESDParamCounts(t *testing.T) {
	enc, err := BuildTAESDEncoder(FullTAESD(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := BuildTAESDDecoder(FullTAESD(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := CountParams(enc); n != 1_222_532 {
		t.Errorf("encoder: %d parameters, want 1,222,532", n)
	}
	if n := CountParams(dec); n != 1_222_531 {
		t.Errorf("decoder: %d parameters, want 1,222,531", n)
	}
}
