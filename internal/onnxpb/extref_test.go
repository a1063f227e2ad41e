package onnxpb

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestExternalRefErrors(t *testing.T) {
	for _, tt := range []struct {
		name     string
		typ      DataType
		dims     []int64
		loc      string
		off, len int64
	}{
		{"absolute location", Float, []int64{2}, "/tmp/x.safetensors", 0, 8},
		{"escaping location", Float, []int64{2}, "../x.safetensors", 0, 8},
		{"empty location", Float, []int64{2}, "", 0, 8},
		{"length not the size", Float16, []int64{2, 3}, "x", 0, 24},
		{"negative offset", Float, []int64{2}, "x", -1, 8},
		{"string type", String, []int64{2}, "x", 0, 8},
		{"negative dim", Float, []int64{-2}, "x", 0, 8},
	} {
		if _, err := ExternalRef("w", tt.typ, tt.dims, tt.loc, tt.off, tt.len); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
	tn, err := ExternalRef("w", BFloat16, []int64{2, 3}, "sub/x.safetensors", 100, 12)
	if err != nil {
		t.Fatal(err)
	}
	loc, off, n, ok := tn.ExternalRange()
	if !ok || loc != "sub/x.safetensors" || off != 100 || n != 12 {
		t.Errorf("ExternalRange = %q %d %d %v", loc, off, n, ok)
	}
	if _, _, _, ok := (&Tensor{Name: "inline", RawData: []byte{1}}).ExternalRange(); ok {
		t.Error("ExternalRange of an inline tensor is ok")
	}
}

// TestWriteFileExternalRef writes a model holding a reference into an
// existing file beside weights moved to weights.pb, and checks that the
// reference is kept as it is and its bytes are not copied.
func TestWriteFileExternalRef(t *testing.T) {
	dir := t.TempDir()
	ckpt := bytes.Repeat([]byte{0xAB}, 4096)
	if err := os.WriteFile(filepath.Join(dir, "ckpt.bin"), ckpt, 0o644); err != nil {
		t.Fatal(err)
	}
	ref, err := ExternalRef("ref", Float, []int64{16, 16}, "ckpt.bin", 1024, 1024)
	if err != nil {
		t.Fatal(err)
	}
	m := smallModel()
	m.Graph.Initializer = append(m.Graph.Initializer, ref,
		&Tensor{Name: "big", Dims: []int64{512}, DataType: Float, Fill: func(dst []byte) {
			for i := range dst {
				dst[i] = 1
			}
		}})
	path := filepath.Join(dir, "model.onnx")
	if err := WriteFile(path, m, &ExternalData{File: LegacyExternalFile, Threshold: 1000}); err != nil {
		t.Fatal(err)
	}
	io, err := ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, in := range io.Initializers {
		switch in.Name {
		case "ref":
			found++
			if in.Location != "ckpt.bin" || in.Offset != 1024 || in.Length != 1024 || in.DataType != Float {
				t.Errorf("reference written as %+v", in)
			}
		case "big":
			found++
			if in.Location != LegacyExternalFile || in.Offset != 0 || in.Length != 2048 {
				t.Errorf("big written as %+v", in)
			}
		}
	}
	if found != 2 {
		t.Fatalf("found %d of the 2 initializers", found)
	}
	st, err := os.Stat(filepath.Join(dir, LegacyExternalFile))
	if err != nil || st.Size() != 2048 {
		t.Errorf("weights.pb: %v, %v bytes; want only big's 2048", err, st)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "ckpt.bin")); !bytes.Equal(got, ckpt) {
		t.Error("the referenced file changed")
	}
	// Marshal keeps the reference too, and a decoded model round-trips it.
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range back.Graph.Initializer {
		if in.Name == "ref" {
			if loc, off, n, ok := in.ExternalRange(); !ok || loc != "ckpt.bin" || off != 1024 || n != 1024 || len(in.RawData) != 0 {
				t.Errorf("decoded reference %q %d %d %v, %d raw bytes", loc, off, n, ok, len(in.RawData))
			}
		}
	}
	// A location ONNX Runtime would refuse is refused when writing.
	bad := *ref
	bad.ExternalData = []StringEntry{{Key: "location", Value: "/abs/ckpt.bin"}, {Key: "length", Value: "1024"}}
	m.Graph.Initializer = append(m.Graph.Initializer, &bad)
	if err := WriteFile(filepath.Join(dir, "bad.onnx"), m, nil); err == nil {
		t.Error("WriteFile accepted an absolute external location")
	}
	if _, err := Marshal(m); err == nil {
		t.Error("Marshal accepted an absolute external location")
	}
}

func TestLinkFile(t *testing.T) {
	src, dir := t.TempDir(), t.TempDir()
	target := filepath.Join(src, "model.safetensors")
	if err := os.WriteFile(target, []byte("weights"), 0o644); err != nil {
		t.Fatal(err)
	}
	loc, err := LinkFile(dir, target)
	if err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			t.Skipf("hard links not available here: %v", err)
		}
		t.Fatal(err)
	}
	if loc != "model.safetensors" {
		t.Errorf("location %q", loc)
	}
	again, err := LinkFile(dir, target)
	if err != nil || again != loc {
		t.Errorf("second link: %q, %v; want the same link reused", again, err)
	}
	// Another file of the same base name gets its own link.
	other := filepath.Join(t.TempDir(), "model.safetensors")
	if err := os.WriteFile(other, []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	if loc2, err := LinkFile(dir, other); err != nil || loc2 != "model.safetensors.1" {
		t.Errorf("link of another file: %q, %v", loc2, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "model.safetensors.1")); string(b) != "other" {
		t.Errorf("model.safetensors.1 holds %q", b)
	}
	if _, err := LinkFile(dir, src); err == nil {
		t.Error("linking a directory: no error")
	}
	if _, err := LinkFile(dir, filepath.Join(src, "missing")); err == nil {
		t.Error("linking a missing file: no error")
	}
}
