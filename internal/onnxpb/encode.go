package onnxpb

import (
	"encoding/binary"
	"fmt"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// Field numbers from onnx/onnx.proto.
const (
	// ModelProto
	fModelIRVersion    = 1
	fModelProducerName = 2
	fModelGraph        = 7
	fModelOpsetImport  = 8
	fModelMetadata     = 14

	// OperatorSetIdProto
	fOpsetDomain  = 1
	fOpsetVersion = 2

	// StringStringEntryProto
	fEntryKey   = 1
	fEntryValue = 2

	// GraphProto
	fGraphNode        = 1
	fGraphName        = 2
	fGraphInitializer = 5
	fGraphInput       = 11
	fGraphOutput      = 12
	fGraphValueInfo   = 13

	// NodeProto
	fNodeInput     = 1
	fNodeOutput    = 2
	fNodeName      = 3
	fNodeOpType    = 4
	fNodeAttribute = 5
	fNodeDomain    = 7

	// AttributeProto
	fAttrName    = 1
	fAttrF       = 2
	fAttrI       = 3
	fAttrS       = 4
	fAttrT       = 5
	fAttrFloats  = 7
	fAttrInts    = 8
	fAttrStrings = 9
	fAttrType    = 20

	// TensorProto
	fTensorDims         = 1
	fTensorDataType     = 2
	fTensorFloatData    = 4
	fTensorInt32Data    = 5
	fTensorInt64Data    = 7
	fTensorName         = 8
	fTensorRawData      = 9
	fTensorExternalData = 13
	fTensorDataLocation = 14

	// ValueInfoProto
	fValueInfoName = 1
	fValueInfoType = 2

	// TypeProto
	fTypeTensor = 1
	// TypeProto.Tensor
	fTensorTypeElemType = 1
	fTensorTypeShape    = 2
	// TensorShapeProto
	fShapeDim = 1
	// TensorShapeProto.Dimension
	fDimValue = 1
	fDimParam = 2
)

// Marshal encodes m as an ONNX ModelProto. Tensors with a Fill function are
// materialized one at a time into the output. Marshal is safe for concurrent
// use as long as m is not modified meanwhile.
func Marshal(m *Model) ([]byte, error) {
	if m == nil {
		return nil, fmt.Errorf("onnxpb: marshal nil model")
	}
	if m.Graph != nil {
		if err := checkExternalRefs(m.Graph); err != nil {
			return nil, fmt.Errorf("onnxpb: marshal: %w", err)
		}
	}
	b := appendModelHead(nil, m)
	if m.Graph != nil {
		g := appendGraph(nil, m.Graph, true)
		b = appendBytesField(b, fModelGraph, g)
	}
	return b, nil
}

// appendModelHead appends every model field except the graph.
func appendModelHead(b []byte, m *Model) []byte {
	if m.IRVersion != 0 {
		b = appendVarintField(b, fModelIRVersion, uint64(m.IRVersion))
	}
	if m.ProducerName != "" {
		b = appendStringField(b, fModelProducerName, m.ProducerName)
	}
	for _, o := range m.OpsetImports {
		var ob []byte
		if o.Domain != "" {
			ob = appendStringField(ob, fOpsetDomain, o.Domain)
		}
		ob = appendVarintField(ob, fOpsetVersion, uint64(o.Version))
		ob = append(ob, o.unknown...)
		b = appendBytesField(b, fModelOpsetImport, ob)
	}
	for _, e := range m.MetadataProps {
		b = appendBytesField(b, fModelMetadata, appendEntry(nil, e))
	}
	return append(b, m.unknown...)
}

func appendEntry(b []byte, e StringEntry) []byte {
	b = appendStringField(b, fEntryKey, e.Key)
	return appendStringField(b, fEntryValue, e.Value)
}

// appendGraph appends g's fields; initializers only when withInit is set.
func appendGraph(b []byte, g *Graph, withInit bool) []byte {
	for _, n := range g.Nodes {
		b = appendBytesField(b, fGraphNode, appendNode(nil, n))
	}
	if g.Name != "" {
		b = appendStringField(b, fGraphName, g.Name)
	}
	for _, v := range g.Input {
		b = appendBytesField(b, fGraphInput, appendValueInfo(nil, v))
	}
	for _, v := range g.Output {
		b = appendBytesField(b, fGraphOutput, appendValueInfo(nil, v))
	}
	for _, v := range g.ValueInfo {
		b = appendBytesField(b, fGraphValueInfo, appendValueInfo(nil, v))
	}
	b = append(b, g.unknown...)
	if withInit { // last, as WriteFile streams them
		for _, t := range g.Initializer {
			b = appendBytesField(b, fGraphInitializer, appendTensor(nil, t))
		}
	}
	return b
}

func appendNode(b []byte, n *Node) []byte {
	for _, s := range n.Input {
		b = appendStringField(b, fNodeInput, s)
	}
	for _, s := range n.Output {
		b = appendStringField(b, fNodeOutput, s)
	}
	if n.Name != "" {
		b = appendStringField(b, fNodeName, n.Name)
	}
	b = appendStringField(b, fNodeOpType, n.OpType)
	for _, a := range n.Attribute {
		b = appendBytesField(b, fNodeAttribute, appendAttribute(nil, a))
	}
	if n.Domain != "" {
		b = appendStringField(b, fNodeDomain, n.Domain)
	}
	return append(b, n.unknown...)
}

func appendAttribute(b []byte, a *Attribute) []byte {
	b = appendStringField(b, fAttrName, a.Name)
	switch a.Type {
	case AttrFloat:
		b = protowire.AppendTag(b, fAttrF, protowire.Fixed32Type)
		b = protowire.AppendFixed32(b, math.Float32bits(a.F))
	case AttrInt:
		b = appendVarintField(b, fAttrI, uint64(a.I))
	case AttrString:
		b = appendBytesField(b, fAttrS, a.S)
	case AttrTensor:
		if a.T != nil {
			b = appendBytesField(b, fAttrT, appendTensor(nil, a.T))
		}
	case AttrFloats:
		b = appendPackedFloats(b, fAttrFloats, a.Floats)
	case AttrInts:
		b = appendPackedInt64s(b, fAttrInts, a.Ints)
	case AttrStrings:
		for _, s := range a.Strings {
			b = appendBytesField(b, fAttrStrings, s)
		}
	}
	b = append(b, a.unknown...)
	return appendVarintField(b, fAttrType, uint64(a.Type))
}

// tensorRawLen returns the length of t's raw_data field content as it will
// be written (0 when t has none).
func tensorRawLen(t *Tensor) int64 {
	if t.Fill != nil {
		return t.NumElements() * int64(t.DataType.Size())
	}
	return int64(len(t.RawData))
}

// appendTensorHead appends all of t's fields except raw_data.
func appendTensorHead(b []byte, t *Tensor) []byte {
	if len(t.Dims) > 0 {
		b = appendPackedInt64s(b, fTensorDims, t.Dims)
	}
	b = appendVarintField(b, fTensorDataType, uint64(t.DataType))
	if len(t.FloatData) > 0 {
		b = appendPackedFloats(b, fTensorFloatData, t.FloatData)
	}
	if len(t.Int32Data) > 0 {
		var p []byte
		for _, v := range t.Int32Data {
			p = protowire.AppendVarint(p, uint64(int64(v)))
		}
		b = appendBytesField(b, fTensorInt32Data, p)
	}
	if len(t.Int64Data) > 0 {
		b = appendPackedInt64s(b, fTensorInt64Data, t.Int64Data)
	}
	if t.Name != "" {
		b = appendStringField(b, fTensorName, t.Name)
	}
	for _, e := range t.ExternalData {
		b = appendBytesField(b, fTensorExternalData, appendEntry(nil, e))
	}
	if t.DataLocation != LocationDefault {
		b = appendVarintField(b, fTensorDataLocation, uint64(t.DataLocation))
	}
	return append(b, t.unknown...)
}

func appendTensor(b []byte, t *Tensor) []byte {
	b = appendTensorHead(b, t)
	n := tensorRawLen(t)
	if n == 0 && t.RawData == nil {
		return b
	}
	b = protowire.AppendTag(b, fTensorRawData, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(n))
	if t.Fill != nil {
		start := len(b)
		b = append(b, make([]byte, n)...)
		t.Fill(b[start:])
		return b
	}
	return append(b, t.RawData...)
}

func appendValueInfo(b []byte, v ValueInfo) []byte {
	b = appendStringField(b, fValueInfoName, v.Name)
	var tt []byte // TypeProto.Tensor
	if v.ElemType != Undefined {
		tt = appendVarintField(tt, fTensorTypeElemType, uint64(v.ElemType))
	}
	if !v.UnknownRank {
		var shape []byte
		for _, d := range v.Dims {
			var db []byte
			switch {
			case d.Param != "":
				db = appendStringField(db, fDimParam, d.Param)
			case d.Value != 0:
				db = appendVarintField(db, fDimValue, uint64(d.Value))
			}
			shape = appendBytesField(shape, fShapeDim, db)
		}
		tt = appendBytesField(tt, fTensorTypeShape, shape)
	}
	var typ []byte
	if v.ElemType != Undefined || !v.UnknownRank {
		typ = appendBytesField(typ, fTypeTensor, tt)
	}
	typ = append(typ, v.typeUnknown...)
	if len(typ) > 0 {
		b = appendBytesField(b, fValueInfoType, typ)
	}
	return append(b, v.unknown...)
}

func appendVarintField(b []byte, num protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendStringField(b []byte, num protowire.Number, s string) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func appendPackedInt64s(b []byte, num protowire.Number, v []int64) []byte {
	var p []byte
	for _, x := range v {
		p = protowire.AppendVarint(p, uint64(x))
	}
	return appendBytesField(b, num, p)
}

func appendPackedFloats(b []byte, num protowire.Number, v []float32) []byte {
	p := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(p[4*i:], math.Float32bits(x))
	}
	return appendBytesField(b, num, p)
}
