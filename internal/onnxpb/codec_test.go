package onnxpb

import (
	"bytes"
	"os"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// smallModel returns a model exercising every modelled field.
func smallModel() *Model {
	return &Model{
		IRVersion:     8,
		ProducerName:  "test",
		OpsetImports:  []OperatorSet{{Version: 17}, {Domain: "com.microsoft", Version: 1}},
		MetadataProps: []StringEntry{{Key: "k", Value: "v"}},
		Graph: &Graph{
			Name: "g",
			Nodes: []*Node{
				{Input: []string{"x", "w"}, Output: []string{"y"}, Name: "mm", OpType: "MatMul"},
				{Input: []string{"y"}, Output: []string{"z"}, OpType: "Softmax", Attribute: []*Attribute{
					{Name: "axis", Type: AttrInt, I: -1},
					{Name: "alpha", Type: AttrFloat, F: 0.5},
					{Name: "mode", Type: AttrString, S: []byte("nearest")},
					{Name: "pads", Type: AttrInts, Ints: []int64{1, 1, -1, 1}},
					{Name: "scales", Type: AttrFloats, Floats: []float32{1, 2.5}},
					{Name: "names", Type: AttrStrings, Strings: [][]byte{[]byte("a"), []byte("b")}},
					{Name: "value", Type: AttrTensor, T: &Tensor{Dims: []int64{2}, DataType: Int64, Int64Data: []int64{3, -4}}},
				}},
			},
			Initializer: []*Tensor{
				{Name: "w", Dims: []int64{2, 2}, DataType: Float, RawData: []byte{0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64}},
				{Name: "f", Dims: []int64{2}, DataType: Float, FloatData: []float32{1, -2}},
				{Name: "i", Dims: []int64{3}, DataType: Int32, Int32Data: []int32{1, -2, 3}},
				{Name: "s", DataType: Int64, Int64Data: []int64{7}},
				{Name: "e", Dims: []int64{4}, DataType: Float16, DataLocation: LocationExternal,
					ExternalData: []StringEntry{{Key: "location", Value: "weights.pb"}, {Key: "offset", Value: "64"}, {Key: "length", Value: "8"}}},
			},
			Input: []ValueInfo{
				{Name: "x", ElemType: Float, Dims: []Dim{{Param: "batch"}, {Value: 2}}},
				{Name: "t", ElemType: Int64},
				{Name: "u", ElemType: Float16, UnknownRank: true},
			},
			Output:    []ValueInfo{{Name: "z", ElemType: Float, Dims: []Dim{{Param: "batch"}, {}}}},
			ValueInfo: []ValueInfo{{Name: "y", ElemType: Float, Dims: []Dim{{Value: 1}, {Value: 2}}}},
		},
	}
}

var cmpOpts = cmp.Options{
	cmp.AllowUnexported(Model{}, OperatorSet{}, Graph{}, Node{}, Attribute{}, Tensor{}, ValueInfo{}),
	cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Fill" }, cmp.Ignore()),
}

// roundTrip encodes m and decodes the encoding, failing the test on an
// error; it returns the decoded model and the encoding.
func roundTrip(t *testing.T, m *Model) (*Model, []byte) {
	t.Helper()
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return got, b
}

func TestMarshalRoundTrip(t *testing.T) {
	m := smallModel()
	got, _ := roundTrip(t, m)
	if diff := cmp.Diff(m, got, cmpOpts); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestMarshalFill(t *testing.T) {
	calls := 0
	m := &Model{IRVersion: 8, Graph: &Graph{Initializer: []*Tensor{{
		Name: "w", Dims: []int64{3}, DataType: Float16,
		Fill: func(dst []byte) {
			calls++
			for i := range dst {
				dst[i] = byte(i + 1)
			}
		},
	}}}}
	got, _ := roundTrip(t, m)
	if calls != 1 || !bytes.Equal(got.Graph.Initializer[0].RawData, []byte{1, 2, 3, 4, 5, 6}) {
		t.Errorf("Fill called %d times, raw data %v", calls, got.Graph.Initializer[0].RawData)
	}
}

// TestReferenceRoundTrip checks that re-encoding a real exported model is
// stable and keeps what ReadIO sees.
func TestReferenceRoundTrip(t *testing.T) {
	path := tinyModel(t, "vae_encoder")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m1, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	m2, b2 := roundTrip(t, m1)
	if len(b2) != len(b) {
		t.Logf("re-encoded size %d, original %d", len(b2), len(b))
	}
	if len(m2.Graph.Nodes) != len(m1.Graph.Nodes) || len(m2.Graph.Initializer) != len(m1.Graph.Initializer) {
		t.Errorf("re-decoded model has %d nodes, %d initializers; want %d, %d",
			len(m2.Graph.Nodes), len(m2.Graph.Initializer), len(m1.Graph.Nodes), len(m1.Graph.Initializer))
	}
	b3, _ := Marshal(m2)
	if !bytes.Equal(b2, b3) {
		t.Error("Marshal is not stable over a round trip")
	}
	io1, err := readIO(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	io2, err := readIO(bytes.NewReader(b2), int64(len(b2)))
	if err != nil {
		t.Fatal(err)
	}
	ignoreOffsets := cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Offset" }, cmp.Ignore())
	if diff := cmp.Diff(io1, io2, ignoreOffsets, cmp.AllowUnexported(ValueInfo{})); diff != "" {
		t.Errorf("ReadIO differs after re-encoding (-orig +re):\n%s", diff)
	}
}

func FuzzUnmarshal(f *testing.F) {
	b, err := Marshal(smallModel())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add(b[:len(b)/2])
	f.Add([]byte{0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Unmarshal(data)
		if _, ioErr := readIO(bytes.NewReader(data), int64(len(data))); ioErr == nil && m != nil && m.Graph == nil {
			t.Errorf("readIO accepted a model without a graph")
		}
		if err != nil {
			return
		}
		b, err := Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Unmarshal(b)
		if err != nil {
			t.Fatalf("re-encoded model does not decode: %v", err)
		}
		b2, _ := Marshal(m2)
		if !bytes.Equal(b, b2) {
			t.Errorf("Marshal not stable after round trip")
		}
	})
}

// TestUnknownFieldsPreserved checks that fields the package does not model
// survive a round trip at every level.
func TestUnknownFieldsPreserved(t *testing.T) {
	m := smallModel()
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	// model.doc_string (6) and model.training_info-like field 20.
	b = appendStringField(b, 6, "model doc")
	b = appendBytesField(b, 20, []byte{0x0a, 0x00})
	m2, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	// node.doc_string (6) and a graph-valued attribute (g = 6, type GRAPH).
	m2.Graph.Nodes[0].unknown = appendStringField(nil, 6, "node doc")
	m2.Graph.Nodes[1].Attribute = append(m2.Graph.Nodes[1].Attribute, &Attribute{Name: "body", Type: AttrGraph, unknown: appendBytesField(nil, 6, appendStringField(nil, fGraphName, "sub"))})
	m3, _ := roundTrip(t, m2)
	b3, _ := Marshal(m3)
	for _, want := range []string{"model doc", "node doc", "sub"} {
		if !bytes.Contains(b3, []byte(want)) {
			t.Errorf("%q lost in round trip", want)
		}
	}
	if got := m3.Graph.Nodes[1].Attribute[len(m3.Graph.Nodes[1].Attribute)-1]; got.Name != "body" || got.Type != AttrGraph {
		t.Errorf("graph attribute = %+v", got)
	}
}

// TestReadIOSkipsInitializerInputs checks that graph inputs backed by an
// initializer (as IR < 4 exports list them) are not reported as inputs.
func TestReadIOSkipsInitializerInputs(t *testing.T) {
	m := smallModel()
	m.Graph.Input = append(m.Graph.Input, ValueInfo{Name: "w", ElemType: Float, Dims: []Dim{{Value: 2}, {Value: 2}}})
	b, err := Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	io, err := readIO(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range io.Inputs {
		names = append(names, v.Name)
	}
	if diff := cmp.Diff([]string{"x", "t", "u"}, names); diff != "" {
		t.Errorf("inputs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int64{"": 17, "com.microsoft": 1}, io.Opsets); diff != "" {
		t.Errorf("opsets (-want +got):\n%s", diff)
	}
	if v, ok := io.Input("u"); !ok || !v.UnknownRank {
		t.Errorf("input u = %+v, %v; want unknown rank", v, ok)
	}
	if v, ok := io.Input("t"); !ok || v.UnknownRank || v.Dims != nil {
		t.Errorf("input t = %+v, %v; want a scalar", v, ok)
	}
	if got := io.ExternalFiles(); !cmp.Equal(got, []string{"weights.pb"}) {
		t.Errorf("external files = %v", got)
	}
}
