package onnxpb

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"google.golang.org/protobuf/encoding/protowire"
)

// ErrTruncated is matched (errors.Is) by a *DecodeError for input that ends
// in the middle of a field.
var ErrTruncated = errors.New("onnxpb: truncated")

// ErrMalformed is matched (errors.Is) by a *DecodeError for input that is not
// a valid encoding of the ONNX messages.
var ErrMalformed = errors.New("onnxpb: malformed")

// DecodeError reports where and why decoding a model failed. Err is
// ErrTruncated, ErrMalformed or an I/O error.
type DecodeError struct {
	Path   string // file name, empty when decoding bytes
	Offset int64  // byte offset in the file or buffer
	Msg    string // what was wrong, e.g. "truncated" or "graph: bad wire type"
	Err    error
}

// Error returns e.g. "onnxpb: unet/model.onnx: truncated at byte 1234".
func (e *DecodeError) Error() string {
	if e.Path == "" {
		return fmt.Sprintf("onnxpb: %s at byte %d", e.Msg, e.Offset)
	}
	return fmt.Sprintf("onnxpb: %s: %s at byte %d", e.Path, e.Msg, e.Offset)
}

// Unwrap returns the underlying sentinel or I/O error.
func (e *DecodeError) Unwrap() error { return e.Err }

func truncatedAt(off int) error {
	return &DecodeError{Offset: int64(off), Msg: "truncated", Err: ErrTruncated}
}

func malformedAt(off int, format string, args ...any) error {
	return &DecodeError{Offset: int64(off), Msg: fmt.Sprintf(format, args...), Err: ErrMalformed}
}

func parseErrAt(off int, code int, what string) error {
	err := protowire.ParseError(code)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return truncatedAt(off)
	}
	return malformedAt(off, "%s: %v", what, err)
}

// field is one decoded protobuf field.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64 // varint and fixed values
	b   []byte // bytes content
	off int    // offset of the value (of b's content for bytes) in the whole input
	raw []byte // the whole field, tag included
}

// eachField calls fn for each field of the message b, which starts at offset
// base of the whole input.
func eachField(b []byte, base int, what string, fn func(f *field) error) error {
	for i := 0; i < len(b); {
		num, typ, n := protowire.ConsumeTag(b[i:])
		if n < 0 {
			return parseErrAt(base+i, n, what)
		}
		m := protowire.ConsumeFieldValue(num, typ, b[i+n:])
		if m < 0 {
			return parseErrAt(base+i+n, m, what)
		}
		val := b[i+n : i+n+m]
		f := field{num: num, typ: typ, raw: b[i : i+n+m], off: base + i + n}
		switch typ {
		case protowire.VarintType:
			f.v, _ = protowire.ConsumeVarint(val)
		case protowire.Fixed32Type:
			v, _ := protowire.ConsumeFixed32(val)
			f.v = uint64(v)
		case protowire.Fixed64Type:
			f.v, _ = protowire.ConsumeFixed64(val)
		case protowire.BytesType:
			var k int
			f.b, k = protowire.ConsumeBytes(val)
			f.off += k - len(f.b)
		}
		if err := fn(&f); err != nil {
			return err
		}
		i += n + m
	}
	return nil
}

func (f *field) want(t protowire.Type, what string) error {
	if f.typ != t {
		return malformedAt(f.off, "%s: field %d has wire type %d, want %d", what, f.num, f.typ, t)
	}
	return nil
}

// int64s decodes a repeated varint field, packed or not.
func (f *field) int64s(dst []int64, what string) ([]int64, error) {
	switch f.typ {
	case protowire.VarintType:
		return append(dst, int64(f.v)), nil
	case protowire.BytesType:
		for p := f.b; len(p) > 0; {
			v, n := protowire.ConsumeVarint(p)
			if n < 0 {
				return nil, parseErrAt(f.off+len(f.b)-len(p), n, what)
			}
			dst = append(dst, int64(v))
			p = p[n:]
		}
		return dst, nil
	}
	return nil, malformedAt(f.off, "%s: field %d has wire type %d", what, f.num, f.typ)
}

// float32s decodes a repeated float field, packed or not.
func (f *field) float32s(dst []float32, what string) ([]float32, error) {
	switch f.typ {
	case protowire.Fixed32Type:
		return append(dst, math.Float32frombits(uint32(f.v))), nil
	case protowire.BytesType:
		if len(f.b)%4 != 0 {
			return nil, malformedAt(f.off, "%s: packed floats of %d bytes", what, len(f.b))
		}
		for i := 0; i < len(f.b); i += 4 {
			dst = append(dst, math.Float32frombits(binary.LittleEndian.Uint32(f.b[i:])))
		}
		return dst, nil
	}
	return nil, malformedAt(f.off, "%s: field %d has wire type %d", what, f.num, f.typ)
}

// Unmarshal decodes an ONNX ModelProto. Unknown fields are kept and written
// back by Marshal. Invalid or truncated input yields a *DecodeError; the
// returned model does not alias b except for tensor raw data, which does.
func Unmarshal(b []byte) (*Model, error) {
	m := new(Model)
	err := eachField(b, 0, "model", func(f *field) error {
		switch f.num {
		case fModelIRVersion:
			if err := f.want(protowire.VarintType, "model ir_version"); err != nil {
				return err
			}
			m.IRVersion = int64(f.v)
		case fModelProducerName:
			if err := f.want(protowire.BytesType, "model producer_name"); err != nil {
				return err
			}
			m.ProducerName = string(f.b)
		case fModelOpsetImport:
			if err := f.want(protowire.BytesType, "model opset_import"); err != nil {
				return err
			}
			o, err := decodeOpset(f.b, f.off)
			if err != nil {
				return err
			}
			m.OpsetImports = append(m.OpsetImports, o)
		case fModelGraph:
			if err := f.want(protowire.BytesType, "model graph"); err != nil {
				return err
			}
			g, err := decodeGraph(f.b, f.off)
			if err != nil {
				return err
			}
			// an external initializer whose location ONNX Runtime would
			// refuse (and Marshal would not write) is a broken file
			if err := checkExternalRefs(g); err != nil {
				return &DecodeError{Offset: int64(f.off), Msg: "graph: " + err.Error(), Err: err}
			}
			m.Graph = g
		case fModelMetadata:
			if err := f.want(protowire.BytesType, "model metadata_props"); err != nil {
				return err
			}
			e, err := decodeEntry(f.b, f.off)
			if err != nil {
				return err
			}
			m.MetadataProps = append(m.MetadataProps, e)
		default:
			m.unknown = append(m.unknown, f.raw...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func decodeOpset(b []byte, base int) (OperatorSet, error) {
	var o OperatorSet
	err := eachField(b, base, "opset_import", func(f *field) error {
		switch f.num {
		case fOpsetDomain:
			if err := f.want(protowire.BytesType, "opset domain"); err != nil {
				return err
			}
			o.Domain = string(f.b)
		case fOpsetVersion:
			if err := f.want(protowire.VarintType, "opset version"); err != nil {
				return err
			}
			o.Version = int64(f.v)
		default:
			o.unknown = append(o.unknown, f.raw...)
		}
		return nil
	})
	return o, err
}

func decodeEntry(b []byte, base int) (StringEntry, error) {
	var e StringEntry
	err := eachField(b, base, "string entry", func(f *field) error {
		switch f.num {
		case fEntryKey, fEntryValue:
			if err := f.want(protowire.BytesType, "string entry"); err != nil {
				return err
			}
			if f.num == fEntryKey {
				e.Key = string(f.b)
			} else {
				e.Value = string(f.b)
			}
		}
		return nil
	})
	return e, err
}

func decodeGraph(b []byte, base int) (*Graph, error) {
	g := new(Graph)
	err := eachField(b, base, "graph", func(f *field) error {
		switch f.num {
		case fGraphNode, fGraphName, fGraphInitializer, fGraphInput, fGraphOutput, fGraphValueInfo:
			if err := f.want(protowire.BytesType, "graph"); err != nil {
				return err
			}
		}
		switch f.num {
		case fGraphNode:
			n, err := decodeNode(f.b, f.off)
			if err != nil {
				return err
			}
			g.Nodes = append(g.Nodes, n)
		case fGraphName:
			g.Name = string(f.b)
		case fGraphInitializer:
			t, err := decodeTensor(f.b, f.off)
			if err != nil {
				return err
			}
			g.Initializer = append(g.Initializer, t)
		case fGraphInput, fGraphOutput, fGraphValueInfo:
			v, err := decodeValueInfo(f.b, f.off)
			if err != nil {
				return err
			}
			switch f.num {
			case fGraphInput:
				g.Input = append(g.Input, v)
			case fGraphOutput:
				g.Output = append(g.Output, v)
			default:
				g.ValueInfo = append(g.ValueInfo, v)
			}
		default:
			g.unknown = append(g.unknown, f.raw...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return g, nil
}

func decodeNode(b []byte, base int) (*Node, error) {
	n := new(Node)
	err := eachField(b, base, "node", func(f *field) error {
		switch f.num {
		case fNodeInput, fNodeOutput, fNodeName, fNodeOpType, fNodeDomain, fNodeAttribute:
			if err := f.want(protowire.BytesType, "node"); err != nil {
				return err
			}
		}
		switch f.num {
		case fNodeInput:
			n.Input = append(n.Input, string(f.b))
		case fNodeOutput:
			n.Output = append(n.Output, string(f.b))
		case fNodeName:
			n.Name = string(f.b)
		case fNodeOpType:
			n.OpType = string(f.b)
		case fNodeDomain:
			n.Domain = string(f.b)
		case fNodeAttribute:
			a, err := decodeAttribute(f.b, f.off)
			if err != nil {
				return err
			}
			n.Attribute = append(n.Attribute, a)
		default:
			n.unknown = append(n.unknown, f.raw...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return n, nil
}

func decodeAttribute(b []byte, base int) (*Attribute, error) {
	a := new(Attribute)
	err := eachField(b, base, "attribute", func(f *field) error {
		var err error
		switch f.num {
		case fAttrName:
			err = f.want(protowire.BytesType, "attribute name")
			a.Name = string(f.b)
		case fAttrType:
			err = f.want(protowire.VarintType, "attribute type")
			a.Type = AttributeType(int32(f.v))
		case fAttrF:
			err = f.want(protowire.Fixed32Type, "attribute f")
			a.F = math.Float32frombits(uint32(f.v))
		case fAttrI:
			err = f.want(protowire.VarintType, "attribute i")
			a.I = int64(f.v)
		case fAttrS:
			err = f.want(protowire.BytesType, "attribute s")
			a.S = append([]byte(nil), f.b...)
		case fAttrT:
			if err = f.want(protowire.BytesType, "attribute t"); err == nil {
				a.T, err = decodeTensor(f.b, f.off)
			}
		case fAttrFloats:
			a.Floats, err = f.float32s(a.Floats, "attribute floats")
		case fAttrInts:
			a.Ints, err = f.int64s(a.Ints, "attribute ints")
		case fAttrStrings:
			err = f.want(protowire.BytesType, "attribute strings")
			a.Strings = append(a.Strings, append([]byte(nil), f.b...))
		default:
			a.unknown = append(a.unknown, f.raw...)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return a, nil
}

func decodeTensor(b []byte, base int) (*Tensor, error) {
	t := new(Tensor)
	err := eachField(b, base, "tensor", func(f *field) error {
		var err error
		switch f.num {
		case fTensorDims:
			t.Dims, err = f.int64s(t.Dims, "tensor dims")
		case fTensorDataType:
			err = f.want(protowire.VarintType, "tensor data_type")
			t.DataType = DataType(int32(f.v))
		case fTensorFloatData:
			t.FloatData, err = f.float32s(t.FloatData, "tensor float_data")
		case fTensorInt32Data:
			var v []int64
			v, err = f.int64s(nil, "tensor int32_data")
			for _, x := range v {
				t.Int32Data = append(t.Int32Data, int32(x))
			}
		case fTensorInt64Data:
			t.Int64Data, err = f.int64s(t.Int64Data, "tensor int64_data")
		case fTensorName:
			err = f.want(protowire.BytesType, "tensor name")
			t.Name = string(f.b)
		case fTensorRawData:
			err = f.want(protowire.BytesType, "tensor raw_data")
			t.RawData = f.b
		case fTensorExternalData:
			if err = f.want(protowire.BytesType, "tensor external_data"); err == nil {
				var e StringEntry
				e, err = decodeEntry(f.b, f.off)
				t.ExternalData = append(t.ExternalData, e)
			}
		case fTensorDataLocation:
			err = f.want(protowire.VarintType, "tensor data_location")
			t.DataLocation = DataLocation(int32(f.v))
		default:
			t.unknown = append(t.unknown, f.raw...)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return t, nil
}

func decodeValueInfo(b []byte, base int) (ValueInfo, error) {
	v := ValueInfo{UnknownRank: true}
	err := eachField(b, base, "value_info", func(f *field) error {
		switch f.num {
		case fValueInfoName:
			if err := f.want(protowire.BytesType, "value_info name"); err != nil {
				return err
			}
			v.Name = string(f.b)
		case fValueInfoType:
			if err := f.want(protowire.BytesType, "value_info type"); err != nil {
				return err
			}
			return decodeType(&v, f.b, f.off)
		default:
			v.unknown = append(v.unknown, f.raw...)
		}
		return nil
	})
	return v, err
}

func decodeType(v *ValueInfo, b []byte, base int) error {
	return eachField(b, base, "type", func(f *field) error {
		if f.num != fTypeTensor {
			v.typeUnknown = append(v.typeUnknown, f.raw...)
			return nil
		}
		if err := f.want(protowire.BytesType, "tensor_type"); err != nil {
			return err
		}
		return eachField(f.b, f.off, "tensor_type", func(f *field) error {
			switch f.num {
			case fTensorTypeElemType:
				if err := f.want(protowire.VarintType, "tensor_type elem_type"); err != nil {
					return err
				}
				v.ElemType = DataType(int32(f.v))
			case fTensorTypeShape:
				if err := f.want(protowire.BytesType, "tensor_type shape"); err != nil {
					return err
				}
				v.UnknownRank = false
				v.Dims = nil
				return eachField(f.b, f.off, "shape", func(f *field) error {
					if f.num != fShapeDim {
						return nil
					}
					if err := f.want(protowire.BytesType, "shape dim"); err != nil {
						return err
					}
					d, err := decodeDim(f.b, f.off)
					v.Dims = append(v.Dims, d)
					return err
				})
			}
			return nil
		})
	})
}

func decodeDim(b []byte, base int) (Dim, error) {
	var d Dim
	err := eachField(b, base, "dim", func(f *field) error {
		switch f.num {
		case fDimValue:
			if err := f.want(protowire.VarintType, "dim_value"); err != nil {
				return err
			}
			d.Value, d.Param = int64(f.v), ""
		case fDimParam:
			if err := f.want(protowire.BytesType, "dim_param"); err != nil {
				return err
			}
			d.Param, d.Value = string(f.b), 0
		}
		return nil
	})
	return d, err
}
