package sd

import (
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestXLMemoryEstimate checks that an SDXL model's text-encoder estimate
// counts text_encoder_2 too: both sessions keep their peaks.
func TestXLMemoryEstimate(t *testing.T) {
	testenv.RequireORT(t)
	dir := filepath.Join(testenv.SharedDir(t), "reference", "tiny-sdxl", "model")
	m, err := Open(t.Context(), dir, WithThreads(UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.mem.te2 == nil {
		t.Fatal("no memory signature for text_encoder_2")
	}
	req := Request{Prompt: "a lighthouse", Width: 64, Height: 64}
	both, err := m.EstimateMemory(req)
	if err != nil {
		t.Fatal(err)
	}
	te2 := m.mem.te2
	m.mem.te2 = nil
	one, err := m.EstimateMemory(req)
	m.mem.te2 = te2
	if err != nil {
		t.Fatal(err)
	}
	if !(both.TextEncoder > one.TextEncoder) || both.UNet != one.UNet {
		t.Errorf("text encoder estimate %d with text_encoder_2, %d without: want it larger, the rest unchanged", both.TextEncoder, one.TextEncoder)
	}
}
