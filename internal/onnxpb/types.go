package onnxpb

import "fmt"

// DataType is an ONNX TensorProto.DataType value.
type DataType int32

// ONNX element types (TensorProto.DataType).
const (
	Undefined  DataType = 0
	Float      DataType = 1
	Uint8      DataType = 2
	Int8       DataType = 3
	Uint16     DataType = 4
	Int16      DataType = 5
	Int32      DataType = 6
	Int64      DataType = 7
	String     DataType = 8
	Bool       DataType = 9
	Float16    DataType = 10
	Double     DataType = 11
	Uint32     DataType = 12
	Uint64     DataType = 13
	Complex64  DataType = 14
	Complex128 DataType = 15
	BFloat16   DataType = 16
)

var dataTypeNames = map[DataType]string{
	Undefined: "undefined", Float: "float32", Uint8: "uint8", Int8: "int8",
	Uint16: "uint16", Int16: "int16", Int32: "int32", Int64: "int64",
	String: "string", Bool: "bool", Float16: "float16", Double: "float64",
	Uint32: "uint32", Uint64: "uint64", Complex64: "complex64",
	Complex128: "complex128", BFloat16: "bfloat16",
}

// String returns the type's name in Go/NumPy style ("float32", "int64").
func (d DataType) String() string {
	if s, ok := dataTypeNames[d]; ok {
		return s
	}
	return fmt.Sprintf("datatype(%d)", int32(d))
}

// Size returns the size in bytes of one element of type d, or 0 for types
// without a fixed size (string, undefined, unknown values).
func (d DataType) Size() int {
	switch d {
	case Uint8, Int8, Bool:
		return 1
	case Uint16, Int16, Float16, BFloat16:
		return 2
	case Float, Int32, Uint32:
		return 4
	case Int64, Uint64, Double, Complex64:
		return 8
	case Complex128:
		return 16
	}
	return 0
}

// AttributeType is an ONNX AttributeProto.AttributeType value.
type AttributeType int32

// Attribute types modelled by this package (others are kept as raw bytes).
const (
	AttrUndefined AttributeType = 0
	AttrFloat     AttributeType = 1
	AttrInt       AttributeType = 2
	AttrString    AttributeType = 3
	AttrTensor    AttributeType = 4
	AttrGraph     AttributeType = 5
	AttrFloats    AttributeType = 6
	AttrInts      AttributeType = 7
	AttrStrings   AttributeType = 8
)

// DataLocation tells where a tensor's data is stored (TensorProto.DataLocation).
type DataLocation int32

// Data locations.
const (
	LocationDefault  DataLocation = 0
	LocationExternal DataLocation = 1
)

// Model is an ONNX ModelProto. A Model is a plain value: it is not safe for
// concurrent modification.
type Model struct {
	IRVersion     int64
	OpsetImports  []OperatorSet
	ProducerName  string
	Graph         *Graph
	MetadataProps []StringEntry

	unknown []byte
}

// OperatorSet is an ONNX OperatorSetIdProto; the empty Domain is the default
// "ai.onnx" domain.
type OperatorSet struct {
	Domain  string
	Version int64

	unknown []byte
}

// StringEntry is an ONNX StringStringEntryProto.
type StringEntry struct {
	Key, Value string
}

// Graph is an ONNX GraphProto.
type Graph struct {
	Name        string
	Nodes       []*Node
	Initializer []*Tensor
	Input       []ValueInfo
	Output      []ValueInfo
	ValueInfo   []ValueInfo

	unknown []byte
}

// Node is an ONNX NodeProto.
type Node struct {
	Input     []string
	Output    []string
	Name      string
	OpType    string
	Domain    string
	Attribute []*Attribute

	unknown []byte
}

// Attribute is an ONNX AttributeProto. Only the field matching Type is
// meaningful; graph-valued attributes are kept as raw bytes.
type Attribute struct {
	Name    string
	Type    AttributeType
	F       float32
	I       int64
	S       []byte
	T       *Tensor
	Floats  []float32
	Ints    []int64
	Strings [][]byte

	unknown []byte
}

// Tensor is an ONNX TensorProto. Its data is in exactly one of RawData,
// FloatData, Int32Data, Int64Data or Fill, or in an external file
// (DataLocation == LocationExternal, with ExternalData entries "location",
// "offset", "length").
//
// Fill, when non-nil, produces the tensor's raw little-endian bytes on
// demand into dst (len(dst) == NumElements*DataType.Size()). Marshal and
// WriteFile call it once per tensor and drop the bytes afterwards, so a
// generator never holds all of a large model's weights at once. Fill must be
// deterministic and is never set by Unmarshal.
type Tensor struct {
	Dims         []int64
	DataType     DataType
	Name         string
	RawData      []byte
	FloatData    []float32
	Int32Data    []int32
	Int64Data    []int64
	ExternalData []StringEntry
	DataLocation DataLocation
	Fill         func(dst []byte)

	unknown []byte
}

// NumElements returns the product of t's dims (1 for a scalar).
func (t *Tensor) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Dims {
		n *= d
	}
	return n
}

// External returns the value of the external_data entry key ("location",
// "offset", "length", "checksum") and whether it is present.
func (t *Tensor) External(key string) (string, bool) {
	for _, e := range t.ExternalData {
		if e.Key == key {
			return e.Value, true
		}
	}
	return "", false
}

// ValueInfo describes a graph input, output or intermediate value of tensor
// type (ValueInfoProto with a TypeProto.Tensor). Dims is nil both for a scalar
// and for an unknown rank; UnknownRank tells them apart.
type ValueInfo struct {
	Name        string
	ElemType    DataType
	Dims        []Dim
	UnknownRank bool

	unknown     []byte // unknown ValueInfoProto fields
	typeUnknown []byte // unknown TypeProto fields (e.g. a non-tensor type)
}

// Dim is one dimension of a tensor shape: a fixed Value, or a symbolic Param
// ("batch", "height"), or neither when the dimension is unknown.
type Dim struct {
	Value int64
	Param string
}

// String returns the dimension as text: its value, its parameter name, or "?".
func (d Dim) String() string {
	switch {
	case d.Param != "":
		return d.Param
	case d.Value > 0:
		return fmt.Sprint(d.Value)
	}
	return "?"
}

// ShapeString formats v's element type and shape, e.g. "float32[batch,4,h,w]",
// with "[...]" for an unknown rank.
func (v ValueInfo) ShapeString() string {
	if v.UnknownRank {
		return v.ElemType.String() + "[...]"
	}
	s := v.ElemType.String() + "["
	for i, d := range v.Dims {
		if i > 0 {
			s += ","
		}
		s += d.String()
	}
	return s + "]"
}
