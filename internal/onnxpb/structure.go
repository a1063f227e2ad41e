package onnxpb

import (
	"encoding/binary"
	"io"

	"google.golang.org/protobuf/encoding/protowire"
)

// Structure is a model's graph without its weights: what ReadIO reads,
// the nodes in file order, and the values of the small integer
// initializers that shape computations use.
type Structure struct {
	*IO
	// Nodes are the main graph's nodes. An attribute whose encoding is
	// larger than 64 KiB (a large Constant) is left out of its node.
	Nodes []*Node
	// Ints holds the values of the int32 and int64 initializers of at
	// most 64 elements, by name.
	Ints map[string][]int64
}

// Limits of what ReadStructure keeps.
const (
	maxStructAttr = 64 << 10
	maxStructInts = 64
)

// ReadStructure reads a model file's structure (see Structure) without
// holding its initializers' data in memory: like ReadIO it seeks over
// tensor data, so it reads the graph's nodes and a few kilobytes more even
// of a multi-gigabyte model. ReadStructure is safe for concurrent use.
func ReadStructure(path string) (*Structure, error) {
	sig, err := ReadIO(path)
	if err != nil {
		return nil, err
	}
	return scanFile(path, func(f io.ReaderAt, size int64) (*Structure, error) {
		s := &sreader{r: f, size: size, buf: make([]byte, 32<<10), bufOff: -1}
		out := &Structure{IO: sig, Ints: map[string][]int64{}}
		err := s.message(s.size, "model", func(num protowire.Number, typ protowire.Type) error {
			if num != fModelGraph {
				return s.skip(typ)
			}
			return s.nested(typ, "graph", func(end int64) error { return s.structureGraph(end, out) })
		})
		return out, err
	})
}

// structureGraph reads the nodes and the small integer initializers of the
// graph message ending at end into out.
func (s *sreader) structureGraph(end int64, out *Structure) error {
	return s.message(end, "graph", func(num protowire.Number, typ protowire.Type) error {
		switch num {
		case fGraphNode:
			return s.nested(typ, "node", func(end int64) error {
				n, err := s.node(end)
				out.Nodes = append(out.Nodes, n)
				return err
			})
		case fGraphInitializer:
			return s.nested(typ, "initializer", func(end int64) error {
				if end-s.pos > 8<<10 { // too large to be a small integer tensor
					s.pos = end
					return nil
				}
				b, err := s.bytes(end - s.pos)
				if err != nil {
					return err
				}
				t, err := decodeTensor(b, int(end)-len(b))
				if err != nil {
					return err
				}
				if v, ok := intValues(t); ok {
					out.Ints[t.Name] = v
				}
				return nil
			})
		}
		return s.skip(typ)
	})
}

// node reads a node message ending at end, leaving out large attributes.
func (s *sreader) node(end int64) (*Node, error) {
	n := new(Node)
	err := s.message(end, "node", func(num protowire.Number, typ protowire.Type) error {
		switch num {
		case fNodeInput, fNodeOutput, fNodeName, fNodeOpType, fNodeDomain:
			b, _, err := s.small(typ, "node")
			if err != nil {
				return err
			}
			switch num {
			case fNodeInput:
				n.Input = append(n.Input, string(b))
			case fNodeOutput:
				n.Output = append(n.Output, string(b))
			case fNodeName:
				n.Name = string(b)
			case fNodeOpType:
				n.OpType = string(b)
			case fNodeDomain:
				n.Domain = string(b)
			}
			return nil
		case fNodeAttribute:
			aend, err := s.sub(typ, "attribute")
			if err != nil {
				return err
			}
			if aend-s.pos > maxStructAttr {
				s.pos = aend
				return nil
			}
			off := s.pos
			b, err := s.bytes(aend - s.pos)
			if err != nil {
				return err
			}
			a, err := decodeAttribute(b, int(off))
			if err != nil {
				return err
			}
			n.Attribute = append(n.Attribute, a)
			return nil
		}
		return s.skip(typ)
	})
	return n, err
}

// intValues returns the values of a small int32 or int64 tensor.
func intValues(t *Tensor) ([]int64, bool) {
	if (t.DataType != Int64 && t.DataType != Int32) || t.NumElements() > maxStructInts || t.DataLocation == LocationExternal {
		return nil, false
	}
	n := int(t.NumElements())
	switch {
	case len(t.Int64Data) == n:
		return append([]int64(nil), t.Int64Data...), true
	case len(t.Int32Data) == n:
		v := make([]int64, n)
		for i, x := range t.Int32Data {
			v[i] = int64(x)
		}
		return v, true
	case t.DataType == Int64 && len(t.RawData) == 8*n:
		v := make([]int64, n)
		for i := range v {
			v[i] = int64(binary.LittleEndian.Uint64(t.RawData[8*i:]))
		}
		return v, true
	case t.DataType == Int32 && len(t.RawData) == 4*n:
		v := make([]int64, n)
		for i := range v {
			v[i] = int64(int32(binary.LittleEndian.Uint32(t.RawData[4*i:])))
		}
		return v, true
	}
	return nil, false
}

// Ints64 returns the values of a small integer tensor attribute (a Constant
// node's value), and whether it is one.
func (a *Attribute) Ints64() ([]int64, bool) {
	if a.T == nil {
		return nil, false
	}
	return intValues(a.T)
}
