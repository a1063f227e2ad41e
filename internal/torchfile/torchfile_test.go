package torchfile

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sdpipe/sdpipe/internal/half"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

func readFile(t *testing.T, name string) ([]safetensors.Info, []byte) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	ts, err := Read(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return ts, b
}

// values decodes a tensor's bytes from the file.
func values(t *testing.T, b []byte, x safetensors.Info) []float32 {
	t.Helper()
	if x.Offset < 0 || x.Offset+x.Size > int64(len(b)) {
		t.Fatalf("%s: bytes [%d, %d) outside the %d-byte file", x.Name, x.Offset, x.Offset+x.Size, len(b))
	}
	return safetensors.ToFloat32(x.DType, b[x.Offset:x.Offset+x.Size])
}

// ar is gen.py's ar: start + 0.25·i.
func ar(n int, start float32, round func(float32) float32) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = round(float32(i)*0.25 + start)
	}
	return out
}

func same(x float32) float32 { return x }

// TestLightningCheckpoint reads a checkpoint torch.save wrote in PyTorch
// Lightning's layout (testdata/gen.py): the state_dict is unwrapped; the
// training state around it (epoch, callbacks keyed by a class, a numpy
// scalar) is read without running anything.
func TestLightningCheckpoint(t *testing.T) {
	ts, b := readFile(t, "lightning.ckpt")
	type shape struct {
		DType safetensors.DType
		Shape []int64
	}
	got := map[string]shape{}
	for _, x := range ts {
		got[x.Name] = shape{x.DType, x.Shape}
	}
	want := map[string]shape{
		"model.diffusion_model.out.2.weight":                              {safetensors.F32, []int64{2, 3, 3, 3}},
		"model.diffusion_model.out.2.bias":                                {safetensors.F32, []int64{2}},
		"first_stage_model.quant_conv.weight":                             {safetensors.F16, []int64{2, 4, 1, 1}},
		"cond_stage_model.transformer.text_model.final_layer_norm.weight": {safetensors.BF16, []int64{5}},
		"cond_stage_model.transformer.text_model.embeddings.position_ids": {safetensors.I64, []int64{1, 7}},
		"view.first":  {safetensors.F32, []int64{2, 3}},
		"view.second": {safetensors.F32, []int64{3, 4}},
		"scalar":      {safetensors.F32, []int64{}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("tensors (-want +got):\n%s", diff)
	}
	bf16 := func(x float32) float32 {
		return safetensors.ToFloat32(safetensors.BF16, safetensors.FromFloat32(safetensors.BF16, []float32{x}))[0]
	}
	f16 := func(x float32) float32 { return half.ToFloat32(half.FromFloat32(x)) }
	for _, x := range ts {
		var w []float32
		switch x.Name {
		case "model.diffusion_model.out.2.weight":
			w = ar(54, 0, same)
		case "model.diffusion_model.out.2.bias":
			w = ar(2, 1, same)
		case "first_stage_model.quant_conv.weight":
			w = ar(8, 0, f16)
		case "cond_stage_model.transformer.text_model.final_layer_norm.weight":
			w = ar(5, -1, bf16)
		case "view.first":
			w = ar(6, 0, same)
		case "view.second":
			w = ar(24, 0, same)[10:22] // a view at storage offset 10
		case "scalar":
			w = []float32{3.5}
		case "cond_stage_model.transformer.text_model.embeddings.position_ids":
			raw := b[x.Offset : x.Offset+x.Size]
			for i := range 7 {
				if v := binary.LittleEndian.Uint64(raw[8*i:]); v != uint64(i) {
					t.Errorf("position_ids[%d] = %d", i, v)
				}
			}
			continue
		}
		if g := values(t, b, x); !cmp.Equal(g, w) {
			t.Errorf("%s = %v, want %v", x.Name, g, w)
		}
	}
}

func TestEmbeddings(t *testing.T) {
	for _, tc := range []struct {
		file  string
		shape []int64
		start float32
	}{
		{"a1111-embedding.pt", []int64{3, 8}, 0},
		{"ldm-embedding.pt", []int64{2, 8}, 2}, // string_to_param is an nn.ParameterDict
	} {
		ts, b := readFile(t, tc.file)
		var found bool
		for _, x := range ts {
			if x.Name != "string_to_param.*" {
				continue
			}
			found = true
			if !cmp.Equal(x.Shape, tc.shape) || x.DType != safetensors.F32 {
				t.Errorf("%s: %s%v", tc.file, x.DType, x.Shape)
			}
			if g, w := values(t, b, x), ar(int(tc.shape[0]*tc.shape[1]), tc.start, same); !cmp.Equal(g, w) {
				t.Errorf("%s: %v, want %v", tc.file, g, w)
			}
		}
		if !found {
			t.Errorf("%s: no string_to_param.* among %v", tc.file, ts)
		}
	}
}

// archive wraps a pickle program in a torch.save-like zip.
func archive(t testing.TB, pkl []byte, storages map[string][]byte, method uint16) []byte {
	var buf bytes.Buffer
	w := zip.NewWriter(&buf)
	put := func(name string, b []byte, m uint16) {
		f, err := w.CreateHeader(&zip.FileHeader{Name: name, Method: m})
		if err != nil {
			t.Fatal(err)
		}
		f.Write(b)
	}
	put("a/data.pkl", pkl, zip.Store)
	for k, v := range storages {
		put("a/data/"+k, v, method)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// tensorPickle is {"w": tensor(storage "0" of numel FloatStorage, offset,
// size, stride)} in torch.save's opcodes, with global replacing the
// rebuild function when non-empty.
func tensorPickle(numel, offset byte, size, stride []byte, global string) []byte {
	if global == "" {
		global = "torch._utils\n_rebuild_tensor_v2\n"
	}
	p := []byte("\x80\x02}X\x01\x00\x00\x00wc" + global + "((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK")
	p = append(p, numel, 't', 'Q', 'K', offset, '(')
	for _, s := range size {
		p = append(p, 'K', s)
	}
	p = append(p, 't', '(')
	for _, s := range stride {
		p = append(p, 'K', s)
	}
	p = append(p, []byte("t\x89ccollections\nOrderedDict\n)RtRs.")...)
	return p
}

func TestRefusals(t *testing.T) {
	data := map[string][]byte{"0": make([]byte, 24)}
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"os.system", archive(t, tensorPickle(6, 0, []byte{2, 3}, []byte{3, 1}, "os\nsystem\n"), data, zip.Store), "os.system"},
		{"builtins.eval", archive(t, []byte("\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R."), nil, zip.Store), "builtins.eval"},
		{"non-contiguous", archive(t, tensorPickle(6, 0, []byte{2, 3}, []byte{1, 2}, ""), data, zip.Store), "not contiguous"},
		{"past the storage", archive(t, tensorPickle(6, 2, []byte{2, 3}, []byte{3, 1}, ""), data, zip.Store), "outside storage"},
		{"storage larger than entry", archive(t, tensorPickle(7, 0, []byte{7}, []byte{1}, ""), data, zip.Store), "does not fit"},
		{"compressed storage", archive(t, tensorPickle(6, 0, []byte{2, 3}, []byte{3, 1}, ""), data, zip.Deflate), "compressed"},
		{"missing storage", archive(t, tensorPickle(6, 0, []byte{2, 3}, []byte{3, 1}, ""), nil, zip.Store), "no entry"},
		{"no data.pkl", func() []byte { var b bytes.Buffer; w := zip.NewWriter(&b); w.Create("x"); w.Close(); return b.Bytes() }(), "no <name>/data.pkl"},
		{"not a zip", []byte("PK\x03\x04garbage"), "zip"},
		{"truncated pickle", archive(t, []byte("\x80\x02}X\x09\x00\x00\x00ab"), nil, zip.Store), "runs past"},
		{"no stop", archive(t, []byte("\x80\x02}"), nil, zip.Store), "without STOP"},
		{"bad memo", archive(t, []byte("\x80\x02h\x05."), nil, zip.Store), "never stored"},
		{"opcode", archive(t, []byte("\x80\x02\xff."), nil, zip.Store), "opcode 0xff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Read(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
	// The well-formed variant of the same file reads.
	good := archive(t, tensorPickle(6, 0, []byte{2, 3}, []byte{3, 1}, ""), map[string][]byte{"0": safetensors.FromFloat32(safetensors.F32, []float32{0, 1, 2, 3, 4, 5})}, zip.Store)
	ts, err := Read(bytes.NewReader(good), int64(len(good)))
	if err != nil {
		t.Fatal(err)
	}
	if len(ts) != 1 || ts[0].Name != "w" || !cmp.Equal(ts[0].Shape, []int64{2, 3}) {
		t.Fatalf("%+v", ts)
	}
	if v := safetensors.ToFloat32(safetensors.F32, good[ts[0].Offset:ts[0].Offset+ts[0].Size]); v[5] != 5 || math.IsNaN(float64(v[0])) {
		t.Errorf("values %v", v)
	}
}

// FuzzUnpickle checks that no program panics the restricted machine.
func FuzzUnpickle(f *testing.F) {
	for _, name := range []string{"lightning.ckpt", "a1111-embedding.pt", "ldm-embedding.pt"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		zr, err := zip.NewReader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range zr.File {
			if strings.HasSuffix(e.Name, "data.pkl") {
				rc, _ := e.Open()
				var buf bytes.Buffer
				buf.ReadFrom(rc)
				f.Add(buf.Bytes())
			}
		}
	}
	f.Add(tensorPickle(6, 0, []byte{2, 3}, []byte{3, 1}, ""))
	f.Fuzz(func(t *testing.T, p []byte) {
		v, err := unpickle(p)
		if err == nil {
			flatten("", v, map[string]*tensor{}, 0, map[any]bool{})
		}
	})
}
