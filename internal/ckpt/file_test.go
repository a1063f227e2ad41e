package ckpt

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// TestOpenFormats opens the same kind of tensors from safetensors and from
// a torch.save archive (internal/torchfile's fixtures, written by torch),
// and refuses the legacy pickle format with advice.
func TestOpenFormats(t *testing.T) {
	f, err := Open(filepath.Join("..", "torchfile", "testdata", "lightning.ckpt"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Format != "pytorch" || len(f.Tensors) != 8 {
		t.Fatalf("format %s, %d tensors", f.Format, len(f.Tensors))
	}
	w, err := f.Float32s("view.second")
	if err != nil {
		t.Fatal(err)
	}
	if len(w) != 12 || w[0] != 2.5 || w[11] != 5.25 {
		t.Errorf("view.second = %v", w)
	}
	if _, err := f.Float32s("cond_stage_model.transformer.text_model.embeddings.position_ids"); err == nil {
		t.Error("Float32s of an int64 tensor: no error")
	}
	_, err = Open(filepath.Join("..", "torchfile", "testdata", "legacy.pt"))
	if err == nil || !strings.Contains(err.Error(), "legacy") || !strings.Contains(err.Error(), "safetensors") {
		t.Errorf("legacy file: %v", err)
	}
	s := openTiny(t, "tiny-sd-fp16.safetensors")
	g, err := Open(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Format != "safetensors" || len(g.Tensors) != len(s.Tensors) {
		t.Fatalf("format %s, %d tensors", g.Format, len(g.Tensors))
	}
	name := "first_stage_model.decoder.conv_in.weight"
	a, _ := g.Bytes(name)
	b, _ := s.Bytes(name)
	if !bytes.Equal(a, b) {
		t.Error("bytes differ between ckpt.File and safetensors.File")
	}
	x, _ := g.Lookup(name)
	if x.DType != safetensors.F16 {
		t.Errorf("dtype %s", x.DType)
	}
}
