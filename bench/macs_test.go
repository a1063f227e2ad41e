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
