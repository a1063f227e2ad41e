package onnxpb

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestReadStructure(t *testing.T) {
	shape := make([]byte, 4*8)
	for i, v := range []int64{0, -1, 8, 40} {
		binary.LittleEndian.PutUint64(shape[8*i:], uint64(v))
	}
	big := &Tensor{Dims: []int64{1 << 15}, DataType: Float, RawData: make([]byte, 4<<15)}
	m := &Model{
		IRVersion: 8, OpsetImports: []OperatorSet{{Version: 17}},
		Graph: &Graph{
			Name: "g",
			Nodes: []*Node{
				{OpType: "Constant", Output: []string{"c"}, Attribute: []*Attribute{{Name: "value", Type: AttrTensor, T: &Tensor{Dims: []int64{1}, DataType: Int64, Int64Data: []int64{4}}}}},
				{OpType: "Constant", Output: []string{"big"}, Attribute: []*Attribute{{Name: "value", Type: AttrTensor, T: big}}},
				{OpType: "Reshape", Input: []string{"x", "shape"}, Output: []string{"y"}, Name: "r"},
				{OpType: "Conv", Input: []string{"y", "w"}, Output: []string{"z"}, Attribute: []*Attribute{{Name: "strides", Type: AttrInts, Ints: []int64{2, 2}}}},
			},
			Initializer: []*Tensor{
				{Name: "shape", Dims: []int64{4}, DataType: Int64, RawData: shape},
				{Name: "w", Dims: []int64{8, 4, 3, 3}, DataType: Float, RawData: make([]byte, 4*8*4*9)},
			},
			Input:  []ValueInfo{{Name: "x", ElemType: Float, Dims: []Dim{{Param: "b"}, {Value: 4}}}},
			Output: []ValueInfo{{Name: "z", ElemType: Float}},
		},
	}
	path := filepath.Join(t.TempDir(), "model.onnx")
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := ReadStructure(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 4 || st.Nodes[2].OpType != "Reshape" || st.Nodes[2].Name != "r" || !slices.Equal(st.Nodes[2].Input, []string{"x", "shape"}) {
		t.Fatalf("nodes %+v", st.Nodes)
	}
	if v, ok := st.Nodes[0].Attribute[0].Ints64(); !ok || !slices.Equal(v, []int64{4}) {
		t.Errorf("small constant %v %v", v, ok)
	}
	if len(st.Nodes[1].Attribute) != 0 {
		t.Errorf("the 128 KiB constant's attribute was kept")
	}
	if got := st.Nodes[3].Attribute; len(got) != 1 || !slices.Equal(got[0].Ints, []int64{2, 2}) {
		t.Errorf("conv attributes %+v", got)
	}
	if !slices.Equal(st.Ints["shape"], []int64{0, -1, 8, 40}) {
		t.Errorf("shape initializer %v", st.Ints["shape"])
	}
	if _, ok := st.Ints["w"]; ok {
		t.Errorf("a float initializer among the integers")
	}
	if len(st.Inputs) != 1 || st.Inputs[0].Name != "x" || len(st.Initializers) != 2 {
		t.Errorf("IO %+v", st.IO)
	}
	if _, err := ReadStructure(filepath.Join(t.TempDir(), "none.onnx")); err == nil {
		t.Errorf("a missing file read")
	}
	if err := os.WriteFile(path, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadStructure(path); err == nil {
		t.Errorf("a truncated file read")
	}
}
