package onnxpb

import (
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFileExternal(t *testing.T) {
	big := func(name string, n int, seed float32) *Tensor {
		return &Tensor{Name: name, Dims: []int64{int64(n)}, DataType: Float, Fill: func(dst []byte) {
			for i := 0; i < n; i++ {
				binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(seed+float32(i)))
			}
		}}
	}
	tests := []struct {
		name     string
		ext      *ExternalData
		external []string // initializers expected external
	}{
		{"inline", nil, nil},
		{"weights.pb", &ExternalData{File: LegacyExternalFile, Threshold: 1000}, []string{"a", "c"}},
		{"aligned", &ExternalData{File: OptimumExternalFile, Threshold: 1000, Align: 4096}, []string{"a", "c"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := smallModel()
			m.Graph.Initializer = append(m.Graph.Initializer[:4], big("a", 1000, 1), big("b", 10, 2),
				&Tensor{Name: "c", Dims: []int64{300}, DataType: Float, FloatData: make([]float32, 300)})
			m.Graph.Initializer[6].FloatData[299] = 42
			dir := t.TempDir()
			path := filepath.Join(dir, "model.onnx")
			if err := WriteFile(path, m, tt.ext); err != nil {
				t.Fatal(err)
			}
			io, err := ReadIO(path)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, in := range io.Initializers {
				if in.External() {
					got = append(got, in.Name)
					if tt.ext.Align > 0 && in.Offset%tt.ext.Align != 0 {
						t.Errorf("%s: offset %d not aligned", in.Name, in.Offset)
					}
				}
			}
			if len(got) != len(tt.external) {
				t.Fatalf("external initializers %v, want %v", got, tt.external)
			}
			// The written file decodes, and its data (inline or external) matches.
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			dm, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := Marshal(m) // everything inline
			wm, _ := Unmarshal(want)
			for i, tn := range dm.Graph.Initializer {
				data := tensorBytes(tn)
				if tn.DataLocation == LocationExternal {
					x, err := os.ReadFile(filepath.Join(dir, tt.ext.File))
					if err != nil {
						t.Fatal(err)
					}
					in := io.Initializers[i]
					data = x[in.Offset : in.Offset+in.Length]
				}
				if !bytes.Equal(data, tensorBytes(wm.Graph.Initializer[i])) {
					t.Errorf("initializer %s: data differs", tn.Name)
				}
			}
			if tt.ext == nil && !bytes.Equal(b, want) {
				t.Error("WriteFile without external data differs from Marshal")
			}
		})
	}
}

func TestWriteFileErrors(t *testing.T) {
	dir := t.TempDir()
	if err := WriteFile(filepath.Join(dir, "m.onnx"), &Model{}, nil); err == nil {
		t.Error("model without graph: no error")
	}
	if err := WriteFile(filepath.Join(dir, "m.onnx"), smallModel(), &ExternalData{File: "../x"}); err == nil {
		t.Error("external file outside the directory: no error")
	}
}
