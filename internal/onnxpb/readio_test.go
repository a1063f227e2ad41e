package onnxpb

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestReadIOReference(t *testing.T) {
	dyn := func(p string) Dim { return Dim{Param: p} }
	_ = dyn
	tests := []struct {
		component string
		inputs    map[string]DataType
		outputs   map[string]DataType
		rank      map[string]int
		external  []string
	}{
		{"text_encoder", map[string]DataType{"input_ids": Int32}, map[string]DataType{"last_hidden_state": Float, "pooler_output": Float},
			map[string]int{"input_ids": 2, "last_hidden_state": 3, "pooler_output": 2}, nil},
		{"unet", map[string]DataType{"sample": Float, "timestep": Float, "encoder_hidden_states": Float}, map[string]DataType{"out_sample": Float},
			map[string]int{"sample": 4, "timestep": 1, "encoder_hidden_states": 3, "out_sample": 4}, []string{"weights.pb"}},
		{"vae_decoder", map[string]DataType{"latent_sample": Float}, map[string]DataType{"sample": Float},
			map[string]int{"latent_sample": 4, "sample": 4}, nil},
		{"vae_encoder", map[string]DataType{"sample": Float}, map[string]DataType{"latent_sample": Float},
			map[string]int{"sample": 4, "latent_sample": 4}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.component, func(t *testing.T) {
			path := tinyModel(t, tt.component)
			m, err := ReadIO(path)
			if err != nil {
				t.Fatal(err)
			}
			if m.Opsets[""] != 14 {
				t.Errorf("opset = %v, want default domain 14", m.Opsets)
			}
			check := func(kind string, got []ValueInfo, want map[string]DataType) {
				t.Helper()
				if len(got) != len(want) {
					t.Errorf("%s: got %d, want %d: %v", kind, len(got), len(want), got)
				}
				for _, v := range got {
					if want[v.Name] != v.ElemType {
						t.Errorf("%s %q: type %v, want %v", kind, v.Name, v.ElemType, want[v.Name])
					}
					if v.UnknownRank || len(v.Dims) != tt.rank[v.Name] {
						t.Errorf("%s %q: shape %s, want rank %d", kind, v.Name, v.ShapeString(), tt.rank[v.Name])
					}
				}
			}
			check("input", m.Inputs, tt.inputs)
			check("output", m.Outputs, tt.outputs)
			if len(m.Initializers) == 0 {
				t.Fatal("no initializers")
			}
			if diff := cmp.Diff(tt.external, m.ExternalFiles()); diff != "" {
				t.Errorf("external files (-want +got):\n%s", diff)
			}
			files, err := ExternalFiles(path)
			if err != nil || !cmp.Equal(files, tt.external) {
				t.Errorf("ExternalFiles = %v, %v; want %v", files, err, tt.external)
			}
			// Every external initializer lies inside its file; inline ones inside the model.
			st, _ := os.Stat(path)
			for _, in := range m.Initializers {
				size := st.Size()
				if in.External() {
					est, err := os.Stat(filepath.Join(filepath.Dir(path), in.Location))
					if err != nil {
						t.Fatal(err)
					}
					size = est.Size()
				}
				n := in.NumBytes()
				if in.Offset < 0 || (in.Length >= 0 && in.Offset+in.Length > size) || (n > 0 && in.Length >= 0 && in.Length != n) {
					t.Errorf("initializer %q %v%v: offset %d length %d (want %d) outside %d bytes", in.Name, in.DataType, in.Dims, in.Offset, in.Length, n, size)
				}
			}
			// ReadIO agrees with the in-memory decoder.
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			full, err := Unmarshal(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(full.Graph.Initializer) != len(m.Initializers) {
				t.Errorf("Unmarshal found %d initializers, ReadIO %d", len(full.Graph.Initializer), len(m.Initializers))
			}
			if diff := cmp.Diff(full.Graph.Output, m.Outputs, cmp.AllowUnexported(ValueInfo{})); diff != "" {
				t.Errorf("outputs differ (-Unmarshal +ReadIO):\n%s", diff)
			}
		})
	}
}

func TestReadIOTruncated(t *testing.T) {
	src := tinyModel(t, "vae_decoder")
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, n := range []int{0, 1, 7, 100, len(b) / 3, len(b) / 2, len(b) - 1} {
		p := filepath.Join(dir, "model.onnx")
		if err := os.WriteFile(p, b[:n], 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := ReadIO(p)
		if err == nil {
			t.Errorf("ReadIO of %d/%d bytes: no error", n, len(b))
			continue
		}
		var de *DecodeError
		if !errors.As(err, &de) || de.Path != p || !strings.Contains(err.Error(), p) {
			t.Errorf("ReadIO of %d bytes: error %q does not name the file", n, err)
		}
		if n > 0 && !errors.Is(err, ErrTruncated) {
			t.Errorf("ReadIO of %d bytes: %v, want ErrTruncated", n, err)
		}
		if _, err := Unmarshal(b[:n]); err == nil && n > 0 {
			t.Errorf("Unmarshal of %d/%d bytes: no error", n, len(b))
		}
	}
}

func TestReadIOMissingFile(t *testing.T) {
	_, err := ReadIO(filepath.Join(t.TempDir(), "nope.onnx"))
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err = %v, want os.ErrNotExist", err)
	}
}
