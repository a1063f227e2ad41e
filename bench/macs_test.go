package main

import (
	"math"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
)

// TestMACsSD15 checks the analytic counts against the counts PERF-FACTS.md
// reports from the ONNX graphs of a diffusers-exported SD 1.5.
func TestMACsSD15(t *testing.T) {
	cfg := modelgen.SD15()
	const tol = 0.1e9 // the reference figures are rounded to 0.1 GMAC
	tests := []struct {
		name        string
		got         MACs
		total, conv float64
		checkSplit  bool
	}{
		{"unet 256 batch 2", UNetMACs(cfg, 2, 32, 32, 77), 180.1e9, 111.0e9, true},
		{"unet 512 batch 2", UNetMACs(cfg, 2, 64, 64, 77), 803.3e9, 444.0e9, true},
		{"vae decoder 256", VAEDecoderMACs(cfg, 1, 32, 32), 311.1e9, 0, false},
		{"vae decoder 512", VAEDecoderMACs(cfg, 1, 64, 64), 1257.3e9, 0, false},
	}
	for _, tt := range tests {
		if d := math.Abs(tt.got.Total() - tt.total); d > tol {
			t.Errorf("%s: %.2f GMAC, want %.1f ± 0.1", tt.name, tt.got.Total()/1e9, tt.total/1e9)
		}
		if tt.checkSplit {
			if d := math.Abs(tt.got.Conv - tt.conv); d > tol {
				t.Errorf("%s: Conv %.2f GMAC, want %.1f ± 0.1", tt.name, tt.got.Conv/1e9, tt.conv/1e9)
			}
		}
	}
	// PERF-FACTS.md says "about 7 GMAC for a guided pair"; that is the
	// count of one 77-token sequence (12 layers × (4·768² + 2·768·3072)
	// MACs a token is 84.9 M), a guided pair is twice that.
	if g := TextEncoderMACs(cfg, 1, 77).Total() / 1e9; math.Abs(g-6.64) > 0.05 {
		t.Errorf("text encoder, one sequence: %.2f GMAC, want 6.64", g)
	}
}

// TestMACsSDXL checks the SDXL count's structure: depth-10 transformers at
// the deepest level dominate, so a model with depth 1 everywhere must count
// far less, and a transformer block's products must scale with depth
// exactly (attention and feed-forward per block, projections once).
func TestMACsSDXL(t *testing.T) {
	cfg := modelgen.SDXL()
	full := UNetMACs(cfg, 2, 128, 128, 77)
	shallow := cfg
	shallow.UNet.TransformerLayers = nil
	flat := UNetMACs(shallow, 2, 128, 128, 77)
	if full.Conv != flat.Conv {
		t.Errorf("transformer depth changed the Conv count: %.1f vs %.1f GMAC", full.Conv/1e9, flat.Conv/1e9)
	}
	if !(full.MatMul > 3*flat.MatMul) {
		t.Errorf("SDXL MatMul %.1f GMAC, depth-1 %.1f: depth (1, 2, 10) should count > 3×", full.MatMul/1e9, flat.MatMul/1e9)
	}
	// One block at 32×32 latents of 1280 channels (SDXL's deepest level at
	// 1024²), batch 2, 77 tokens of 2048: self-attention 4·n·c² + 2·n²·c,
	// cross-attention 2·n·c² + 2·77·2048·c + 2·n·77·c, feed-forward 12·n·c².
	// The deepest level's depth is used by its 2 down transformers, the mid
	// block's and its 3 up transformers.
	n, c := 32.0*32, 1280.0
	block := 2 * (4*n*c*c + 2*n*n*c + 2*n*c*c + 2*77*2048*c + 2*n*77*c + 12*n*c*c)
	one := cfg
	one.UNet.TransformerLayers = []int{1, 2, 11}
	if d := UNetMACs(one, 2, 128, 128, 77).MatMul - full.MatMul; math.Abs(d-6*block) > 1e3 {
		t.Errorf("one more block at the deepest level adds %.3f GMAC, want %.3f (6 transformers)", d/1e9, 6*block/1e9)
	}
	if g := TextEncoderMACs(cfg, 1, 77).Total() / 1e9; g < 6.64 {
		t.Errorf("SDXL text encoders %.2f GMAC, less than CLIP ViT-L alone", g)
	}
	t.Logf("SDXL 1024² batch 2: UNet %.1f GMAC (Conv %.1f, MatMul %.1f), VAE decoder %.1f GMAC, text %.2f GMAC",
		full.Total()/1e9, full.Conv/1e9, full.MatMul/1e9, VAEDecoderMACs(cfg, 1, 128, 128).Total()/1e9, TextEncoderMACs(cfg, 1, 77).Total()/1e9)
}
