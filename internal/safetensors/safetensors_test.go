package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/sdpipe/sdpipe/internal/half"
	"github.com/sdpipe/sdpipe/internal/shareddir"
)

func tinyCkpt(t *testing.T, name string) string {
	t.Helper()
	return shareddir.File(t, "reference/tiny-ckpt/"+name)
}

// TestReferenceFiles reads the reference checkpoints (written by a reader
// and writer that follow the reference implementation's rules) and checks
// that the fp16 copy holds exactly the fp32 weights rounded to fp16.
func TestReferenceFiles(t *testing.T) {
	f32, err := Open(tinyCkpt(t, "tiny-sd.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f32.Close()
	f16, err := Open(tinyCkpt(t, "tiny-sd-fp16.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	defer f16.Close()
	if len(f32.Tensors) != 568 || len(f16.Tensors) != 568 {
		t.Fatalf("tensors: %d and %d, want 568", len(f32.Tensors), len(f16.Tensors))
	}
	if f32.Metadata != nil {
		t.Errorf("metadata %v, want none", f32.Metadata)
	}
	for _, a := range f32.Tensors {
		b, ok := f16.Lookup(a.Name)
		if !ok {
			t.Fatalf("%s missing from the fp16 file", a.Name)
		}
		if a.DType != F32 || b.DType != F16 || !cmp.Equal(a.Shape, b.Shape) {
			t.Fatalf("%s: %s%v and %s%v", a.Name, a.DType, a.Shape, b.DType, b.Shape)
		}
		x, err := f32.Float32s(a.Name)
		if err != nil {
			t.Fatal(err)
		}
		y, err := f16.Float32s(a.Name)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(x)) != a.NumElements() {
			t.Fatalf("%s: %d values for shape %v", a.Name, len(x), a.Shape)
		}
		for i := range x {
			if r := half.ToFloat32(half.FromFloat32(x[i])); r != y[i] {
				t.Fatalf("%s[%d]: fp32 %v rounds to %v, fp16 file has %v", a.Name, i, x[i], r, y[i])
			}
		}
	}
	emb, _ := f32.Lookup("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight")
	if !cmp.Equal(emb.Shape, []int64{49408, 32}) {
		t.Errorf("token embedding shape %v", emb.Shape)
	}
}

func TestRoundTrip(t *testing.T) {
	vals := []float32{0, 1, -2.5, 65504, 1e-3, float32(math.Inf(-1)), 3.140625}
	ints := make([]byte, 16)
	binary.LittleEndian.PutUint64(ints, 7)
	binary.LittleEndian.PutUint64(ints[8:], math.MaxUint64)
	in := []WriteTensor{
		{Name: "b.f32", DType: F32, Shape: []int64{7}, Data: FromFloat32(F32, vals)},
		{Name: "a.f16", DType: F16, Shape: []int64{7, 1}, Data: FromFloat32(F16, vals)},
		{Name: "c.bf16", DType: BF16, Shape: []int64{1, 7}, Fill: func(dst []byte) { copy(dst, FromFloat32(BF16, vals)) }},
		{Name: "d.i64", DType: I64, Shape: []int64{2}, Data: ints},
		{Name: "e.empty", DType: F32, Shape: []int64{0, 3}, Data: []byte{}},
		{Name: "f.scalar", DType: F32, Data: FromFloat32(F32, []float32{2})},
	}
	path := filepath.Join(t.TempDir(), "x.safetensors")
	meta := map[string]string{"format": "pt", "ss_x": "{\"a\": 1}"}
	if err := WriteFile(path, in, meta); err != nil {
		t.Fatal(err)
	}
	f, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !cmp.Equal(f.Metadata, meta) {
		t.Errorf("metadata %v, want %v", f.Metadata, meta)
	}
	if (f.DataOffset-8)%8 != 0 {
		t.Errorf("header of %d bytes is not padded to 8", f.DataOffset-8)
	}
	names := []string{}
	for _, x := range f.Tensors {
		names = append(names, x.Name)
	}
	if want := []string{"a.f16", "b.f32", "c.bf16", "d.i64", "e.empty", "f.scalar"}; !cmp.Equal(names, want) {
		t.Errorf("names %v, want %v", names, want)
	}
	for _, tc := range []struct {
		name string
		tol  float64
	}{{"b.f32", 0}, {"a.f16", 1e-3}, {"c.bf16", 8e-3}} {
		got, err := f.Float32s(tc.name)
		if err != nil {
			t.Fatal(err)
		}
		for i, v := range vals {
			if d := math.Abs(float64(got[i] - v)); !(d <= tc.tol*math.Abs(float64(v))) && !(math.IsInf(float64(v), 0) && got[i] == v) {
				t.Errorf("%s[%d] = %v, want %v", tc.name, i, got[i], v)
			}
		}
	}
	if b, _ := f.Bytes("d.i64"); !bytes.Equal(b, ints) {
		t.Errorf("i64 bytes %x", b)
	}
	if _, err := f.Float32s("d.i64"); err == nil {
		t.Error("Float32s of an I64 tensor: no error")
	}
	if _, err := f.Float32s("nope"); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("missing tensor: %v", err)
	}
	if s, _ := f.Float32s("f.scalar"); !cmp.Equal(s, []float32{2}) {
		t.Errorf("scalar %v", s)
	}
}

func TestHalfExhaustive(t *testing.T) {
	for h := 0; h < 1<<16; h++ {
		f := half.ToFloat32(uint16(h))
		if math.IsNaN(float64(f)) {
			continue
		}
		if back := half.FromFloat32(f); back != uint16(h) {
			t.Fatalf("half %#04x → %v → %#04x", h, f, back)
		}
	}
	// Ties round to even; overflow saturates; below the smallest subnormal is zero.
	for _, tc := range []struct {
		f    float32
		want uint16
	}{{1 + 1.0/2048, 0x3c00}, {1 + 3.0/2048, 0x3c02}, {65520, 0x7c00}, {1e-9, 0}, {float32(math.Copysign(0, -1)), 0x8000}, {5.960464477539063e-08, 1}} {
		if got := half.FromFloat32(tc.f); got != tc.want {
			t.Errorf("Float32ToHalf(%v) = %#04x, want %#04x", tc.f, got, tc.want)
		}
	}
	for _, tc := range []struct {
		f    float32
		want uint16
	}{{1, 0x3f80}, {1 + 1.0/256, 0x3f80}, {1 + 3.0/256, 0x3f82}, {float32(math.Inf(1)), 0x7f80}} {
		if got := Float32ToBFloat16(tc.f); got != tc.want {
			t.Errorf("Float32ToBFloat16(%v) = %#04x, want %#04x", tc.f, got, tc.want)
		}
	}
	if !math.IsNaN(float64(ToFloat32(BF16, []byte{0x81, 0x7f})[0])) || Float32ToBFloat16(float32(math.NaN()))&0x7fff <= 0x7f80 {
		t.Error("bfloat16 NaN not kept")
	}
}

// file builds a safetensors file from a raw header string and data size.
func file(header string, data int) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	b = append(b, header...)
	return append(b, make([]byte, data)...)
}

func TestHostileHeaders(t *testing.T) {
	big := binary.LittleEndian.AppendUint64(nil, 1<<40)
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "shorter than"},
		{"huge header length", append(big, "{}"...), "exceeds"},
		{"header past end", binary.LittleEndian.AppendUint64(nil, 100), "runs past the end"},
		{"not json", file("[1,2]", 0), "does not start with"},
		{"bad utf8", file("{\"\xff\":1}", 0), "UTF-8"},
		{"duplicate", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "twice"},
		{"unknown dtype", file(`{"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}}`, 4), "unknown dtype"},
		{"missing shape", file(`{"a":{"dtype":"F32","data_offsets":[0,4]}}`, 4), "needs dtype"},
		{"negative dim", file(`{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}`, 4), "non-negative"},
		{"float dim", file(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}`, 4), "non-negative"},
		{"three offsets", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}}`, 4), "pair"},
		{"reversed offsets", file(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}`, 4), "end before"},
		{"size mismatch", file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}`, 4), "needs 8 bytes"},
		{"overflowing shape", file(`{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}`, 4), "too large"},
		{"past data", file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, 4), "run past"},
		{"overlap", file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "overlap"},
		{"hole", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8), "hole"},
		{"trailing data", file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 8), "cover 4 bytes of the 8"},
		{"trailing json", file(`{} {}`, 0), "trailing"},
		{"metadata not strings", file(`{"__metadata__":{"a":1}}`, 0), "__metadata__"},
		{"entry not object", file(`{"a":3}`, 0), "tensor \"a\""},
		{"truncated json", file(`{"a":{"dtype":"F32"`, 0), "header"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ReadHeader(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
			if _, ok := errors.AsType[*FormatError](err); !ok {
				t.Errorf("error %q is not a *FormatError", err)
			}
		})
	}
	// Padding spaces and zero-size tensors are fine.
	ok := file(`{"z":{"dtype":"F16","shape":[0],"data_offsets":[4,4]},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}   `, 4)
	h, err := ReadHeader(bytes.NewReader(ok), int64(len(ok)))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Tensors) != 2 || h.Tensors[0].Name != "a" {
		t.Errorf("tensors %+v", h.Tensors)
	}
}

func TestOpenErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "bad.safetensors")
	if err := os.WriteFile(p, file(`{"a":1}`, 0), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("Open: %v, want an error naming %s", err, p)
	}
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "regular") {
		t.Errorf("Open(dir): %v", err)
	}
	if _, err := Open(filepath.Join(dir, "none")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open(missing): %v", err)
	}
}

// FuzzReadHeader checks that no input panics or allocates past its size,
// and that every accepted header describes tensors that tile the data
// section exactly.
func FuzzReadHeader(f *testing.F) {
	f.Add(file(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`, 4))
	f.Add(file(`{"__metadata__":{"k":"v"},"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[0,4]},"a":{"dtype":"U8","shape":[],"data_offsets":[4,5]}}`, 5))
	f.Add(file(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, 8))
	var buf bytes.Buffer
	if err := Write(&buf, []WriteTensor{{Name: "x", DType: F16, Shape: []int64{3}, Data: make([]byte, 6)}}, map[string]string{"m": "1"}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ReadHeader(bytes.NewReader(b), int64(len(b)))
		if err != nil {
			return
		}
		var total int64
		for _, x := range h.Tensors {
			if x.Size != x.NumElements()*int64(x.DType.Size()) || x.Offset < h.DataOffset || x.Offset+x.Size > int64(len(b)) {
				t.Fatalf("accepted bad tensor %+v (file of %d bytes)", x, len(b))
			}
			total += x.Size
		}
		if total != int64(len(b))-h.DataOffset {
			t.Fatalf("tensors cover %d of %d data bytes", total, int64(len(b))-h.DataOffset)
		}
	})
}
