package ort_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// runTinyUNet runs the reference UNet session s on fixed random inputs.
func runTinyUNet(t *testing.T, s *ort.Session) []float32 {
	t.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	randn := func(n int) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		return d
	}
	in := []ort.Tensor{
		{Shape: []int64{2, 4, 8, 8}, Data: randn(2 * 4 * 8 * 8)},
		{Shape: []int64{2}, Data: []float32{501, 501}},
		{Shape: []int64{2, 77, 32}, Data: randn(2 * 77 * 32)},
	}
	out := []ort.Tensor{{}}
	if err := s.Run(t.Context(), in, out); err != nil {
		t.Fatal(err)
	}
	return out[0].Data.([]float32)
}

// TestOpenDataExternal checks that a model opened from memory finds its
// external data in the folder given, and computes what the file does.
func TestOpenDataExternal(t *testing.T) {
	testenv.RequireORT(t)
	path := filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx")
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := ort.Open(t.Context(), path, ins, outs, ort.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	want := runTinyUNet(t, ref)

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.OpenData(t.Context(), "unet (memory)", data, filepath.Dir(path), ins, outs, ort.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if d := testenv.MaxAbsDiff(runTinyUNet(t, s), want); d != 0 {
		t.Errorf("model from memory differs from the file by %g", d)
	}

	// without the folder, the weights cannot be found
	if s, err := ort.OpenData(t.Context(), "unet (no folder)", data, t.TempDir(), ins, outs, ort.Options{IntraOpThreads: 1}); err == nil {
		s.Close()
		t.Error("OpenData found external data in an empty folder")
	}
}

// TestOpenLinkedExternal checks that ONNX Runtime opens a model whose
// external data is a hard link (what internal/rewrite's cache relies on),
// and logs whether it accepts a symbolic link leaving the model's folder
// (1.29 refuses it: "External data path escapes model directory").
func TestOpenLinkedExternal(t *testing.T) {
	testenv.RequireORT(t)
	path := filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx")
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"symlink", "hardlink"} {
		dir := t.TempDir()
		data, _ := os.ReadFile(path)
		if err := os.WriteFile(filepath.Join(dir, "model.onnx"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(filepath.Dir(path), "weights.pb")
		dst := filepath.Join(dir, "weights.pb")
		if kind == "symlink" {
			err = os.Symlink(src, dst)
		} else {
			err = os.Link(src, dst)
		}
		if err != nil {
			t.Logf("%s: %v", kind, err)
			continue
		}
		s, err := ort.Open(t.Context(), filepath.Join(dir, "model.onnx"), ins, outs, ort.Options{IntraOpThreads: 1})
		if err != nil && kind == "hardlink" {
			t.Errorf("%s: %v", kind, err)
		}
		if err != nil {
			t.Logf("%s: %v", kind, err)
			continue
		}
		t.Logf("%s: opens", kind)
		s.Close()
	}
}
