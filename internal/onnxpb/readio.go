package onnxpb

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// IO is what a loader needs to know about a model file without its weights:
// see ReadIO.
type IO struct {
	IRVersion    int64
	ProducerName string
	// Opsets maps an operator-set domain to its version; the default ONNX
	// domain is the key "" (files that spell it "ai.onnx" are normalized).
	Opsets map[string]int64
	// Inputs are the graph inputs that are not initializers, in graph order.
	Inputs []ValueInfo
	// Outputs are the graph outputs, in graph order.
	Outputs []ValueInfo
	// Initializers lists every initializer of the main graph, in file order.
	Initializers []InitializerInfo
}

// InitializerInfo describes one initializer without its data.
type InitializerInfo struct {
	Name     string
	DataType DataType
	Dims     []int64
	// Location is the external data file (relative to the model's directory)
	// holding the tensor, or "" when the data is inside the model file.
	Location string
	// Offset and Length locate the data in the external file (Length is -1
	// when the file does not say, meaning "to the end of the file"). For data
	// inside the model, Offset is its position in the model file and Length
	// its size in bytes.
	Offset, Length int64
}

// External reports whether the initializer's data lives in an external file.
func (t InitializerInfo) External() bool { return t.Location != "" }

// ExternalFiles returns the distinct external data files the initializers
// reference, in order of first use.
func (m *IO) ExternalFiles() []string {
	var files []string
	seen := map[string]bool{}
	for _, t := range m.Initializers {
		if t.Location != "" && !seen[t.Location] {
			seen[t.Location] = true
			files = append(files, t.Location)
		}
	}
	return files
}

// Input returns the graph input named name.
func (m *IO) Input(name string) (ValueInfo, bool) { return find(m.Inputs, name) }

// Output returns the graph output named name.
func (m *IO) Output(name string) (ValueInfo, bool) { return find(m.Outputs, name) }

func find(vs []ValueInfo, name string) (ValueInfo, bool) {
	for _, v := range vs {
		if v.Name == name {
			return v, true
		}
	}
	return ValueInfo{}, false
}

// ReadIO reads a model file's IR version, opset imports, graph inputs and
// outputs (names, element types, dims) and initializer names and locations,
// without holding initializers in memory: it seeks over tensor data and
// nodes, so it reads only a few kilobytes even of a multi-gigabyte model.
// Errors name the file and the problem, e.g.
// "onnxpb: unet/model.onnx: truncated at byte 1234" (a *DecodeError).
// ReadIO is safe for concurrent use.
func ReadIO(path string) (*IO, error) { return scanFile(path, readIO) }

// scanFile runs scan on the model file at path and names the file in its
// errors (a *DecodeError gets the Path).
func scanFile[T any](path string, scan func(f io.ReaderAt, size int64) (T, error)) (T, error) {
	var zero T
	f, err := os.Open(path)
	if err != nil {
		return zero, fmt.Errorf("onnxpb: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return zero, fmt.Errorf("onnxpb: %w", err)
	}
	v, err := scan(f, st.Size())
	if err != nil {
		var de *DecodeError
		if errors.As(err, &de) {
			de.Path = path
			return zero, de
		}
		return zero, fmt.Errorf("onnxpb: %s: %w", path, err)
	}
	return v, nil
}

// ExternalFiles returns the external data files (relative to the model's
// directory, e.g. "weights.pb") that the model file's initializers
// reference, in order of first use; nil when all data is inside the model.
// It reads the file as ReadIO does. ExternalFiles is safe for concurrent use.
func ExternalFiles(path string) ([]string, error) {
	m, err := ReadIO(path)
	if err != nil {
		return nil, err
	}
	return m.ExternalFiles(), nil
}

// sreader reads protobuf wire data from an io.ReaderAt through a small
// buffer, and skips by moving its position.
type sreader struct {
	r      io.ReaderAt
	size   int64
	buf    []byte
	bufOff int64
	bufN   int
	pos    int64
}

func (s *sreader) truncated() error {
	return &DecodeError{Offset: s.size, Msg: "truncated", Err: ErrTruncated}
}

func (s *sreader) malformed(off int64, format string, args ...any) error {
	return &DecodeError{Offset: off, Msg: fmt.Sprintf(format, args...), Err: ErrMalformed}
}

func (s *sreader) readByte() (byte, error) {
	if s.pos >= s.size {
		return 0, s.truncated()
	}
	if s.pos < s.bufOff || s.pos >= s.bufOff+int64(s.bufN) {
		n, err := s.r.ReadAt(s.buf, s.pos)
		if n == 0 {
			if err == nil || err == io.EOF {
				return 0, s.truncated()
			}
			return 0, &DecodeError{Offset: s.pos, Msg: "read: " + err.Error(), Err: err}
		}
		s.bufOff, s.bufN = s.pos, n
	}
	b := s.buf[s.pos-s.bufOff]
	s.pos++
	return b, nil
}

func (s *sreader) varint() (uint64, error) {
	start := s.pos
	var v uint64
	for i := 0; i < 10; i++ {
		b, err := s.readByte()
		if err != nil {
			return 0, err
		}
		v |= uint64(b&0x7f) << (7 * i)
		if b < 0x80 {
			return v, nil
		}
	}
	return 0, s.malformed(start, "varint overflow")
}

// length reads a length prefix and checks it against the file size.
func (s *sreader) length() (int64, error) {
	start := s.pos
	v, err := s.varint()
	if err != nil {
		return 0, err
	}
	if v > uint64(s.size-s.pos) {
		if v > 1<<62 {
			return 0, s.malformed(start, "length %d out of range", v)
		}
		return 0, s.truncated()
	}
	return int64(v), nil
}

// bytes reads n bytes (n already checked by length).
func (s *sreader) bytes(n int64) ([]byte, error) {
	b := make([]byte, n)
	for i := range b {
		c, err := s.readByte()
		if err != nil {
			return nil, err
		}
		b[i] = c
	}
	return b, nil
}

func (s *sreader) tag() (protowire.Number, protowire.Type, error) {
	start := s.pos
	v, err := s.varint()
	if err != nil {
		return 0, 0, err
	}
	num, typ := protowire.DecodeTag(v)
	if num < protowire.MinValidNumber || num > protowire.MaxValidNumber {
		return 0, 0, s.malformed(start, "invalid field number %d", num)
	}
	return num, typ, nil
}

func (s *sreader) skip(typ protowire.Type) error {
	start := s.pos
	switch typ {
	case protowire.VarintType:
		_, err := s.varint()
		return err
	case protowire.Fixed32Type, protowire.Fixed64Type:
		n := int64(4)
		if typ == protowire.Fixed64Type {
			n = 8
		}
		if s.size-s.pos < n {
			return s.truncated()
		}
		s.pos += n
		return nil
	case protowire.BytesType:
		n, err := s.length()
		if err != nil {
			return err
		}
		s.pos += n
		return nil
	}
	return s.malformed(start, "unsupported wire type %d", typ)
}

// message calls fn for each field of a length-delimited message ending at
// end; fn must consume the field's value (or call skip).
func (s *sreader) message(end int64, what string, fn func(num protowire.Number, typ protowire.Type) error) error {
	for s.pos < end {
		num, typ, err := s.tag()
		if err != nil {
			return err
		}
		if err := fn(num, typ); err != nil {
			return err
		}
		if s.pos > end {
			return s.malformed(end, "%s: field %d overruns its message", what, num)
		}
	}
	return nil
}

// sub reads the length prefix of a nested message and returns its end.
func (s *sreader) sub(typ protowire.Type, what string) (int64, error) {
	if typ != protowire.BytesType {
		return 0, s.malformed(s.pos, "%s: wire type %d, want bytes", what, typ)
	}
	n, err := s.length()
	if err != nil {
		return 0, err
	}
	return s.pos + n, nil
}

// nested runs parse on the nested message (what) whose field the scan is
// at, with the message's end.
func (s *sreader) nested(typ protowire.Type, what string, parse func(end int64) error) error {
	end, err := s.sub(typ, what)
	if err != nil {
		return err
	}
	return parse(end)
}

// small reads a whole nested message into memory, for the small messages
// (opsets, value infos, string entries) that the in-memory decoder handles.
func (s *sreader) small(typ protowire.Type, what string) ([]byte, int, error) {
	end, err := s.sub(typ, what)
	if err != nil {
		return nil, 0, err
	}
	off := s.pos
	b, err := s.bytes(end - s.pos)
	return b, int(off), err
}

func readIO(r io.ReaderAt, size int64) (*IO, error) {
	s := &sreader{r: r, size: size, buf: make([]byte, 32<<10), bufOff: -1}
	m := &IO{Opsets: map[string]int64{}}
	var inputs []ValueInfo
	sawGraph := false
	err := s.message(size, "model", func(num protowire.Number, typ protowire.Type) error {
		switch {
		case num == fModelIRVersion && typ == protowire.VarintType:
			v, err := s.varint()
			m.IRVersion = int64(v)
			return err
		case num == fModelProducerName && typ == protowire.BytesType:
			b, _, err := s.small(typ, "producer_name")
			m.ProducerName = string(b)
			return err
		case num == fModelOpsetImport:
			b, off, err := s.small(typ, "opset_import")
			if err != nil {
				return err
			}
			o, err := decodeOpset(b, off)
			if err != nil {
				return err
			}
			d := o.Domain
			if d == "ai.onnx" {
				d = ""
			}
			m.Opsets[d] = o.Version
			return nil
		case num == fModelGraph:
			sawGraph = true
			return s.nested(typ, "graph", func(end int64) error { return s.graph(end, m, &inputs) })
		}
		return s.skip(typ)
	})
	if err != nil {
		return nil, err
	}
	if !sawGraph {
		return nil, s.malformed(0, "no graph")
	}
	isInit := map[string]bool{}
	for _, t := range m.Initializers {
		isInit[t.Name] = true
	}
	for _, v := range inputs {
		if !isInit[v.Name] {
			m.Inputs = append(m.Inputs, v)
		}
	}
	return m, nil
}

func (s *sreader) graph(end int64, m *IO, inputs *[]ValueInfo) error {
	return s.message(end, "graph", func(num protowire.Number, typ protowire.Type) error {
		switch num {
		case fGraphInput, fGraphOutput:
			b, off, err := s.small(typ, "graph input/output")
			if err != nil {
				return err
			}
			v, err := decodeValueInfo(b, off)
			if err != nil {
				return err
			}
			if num == fGraphInput {
				*inputs = append(*inputs, v)
			} else {
				m.Outputs = append(m.Outputs, v)
			}
			return nil
		case fGraphInitializer:
			return s.nested(typ, "initializer", func(end int64) error {
				t, err := s.initializer(end)
				m.Initializers = append(m.Initializers, t)
				return err
			})
		}
		return s.skip(typ)
	})
}

func (s *sreader) initializer(end int64) (InitializerInfo, error) {
	t := InitializerInfo{Offset: -1, Length: -1}
	var ext []StringEntry
	external := false
	err := s.message(end, "initializer", func(num protowire.Number, typ protowire.Type) error {
		switch num {
		case fTensorDims:
			if typ == protowire.VarintType {
				v, err := s.varint()
				t.Dims = append(t.Dims, int64(v))
				return err
			}
			b, off, err := s.small(typ, "tensor dims")
			if err != nil {
				return err
			}
			f := field{num: num, typ: typ, b: b, off: off}
			t.Dims, err = f.int64s(t.Dims, "tensor dims")
			return err
		case fTensorDataType:
			if typ != protowire.VarintType {
				return s.malformed(s.pos, "tensor data_type: wire type %d", typ)
			}
			v, err := s.varint()
			t.DataType = DataType(int32(v))
			return err
		case fTensorName:
			b, _, err := s.small(typ, "tensor name")
			t.Name = string(b)
			return err
		case fTensorExternalData:
			b, off, err := s.small(typ, "tensor external_data")
			if err != nil {
				return err
			}
			e, err := decodeEntry(b, off)
			ext = append(ext, e)
			return err
		case fTensorDataLocation:
			if typ != protowire.VarintType {
				return s.malformed(s.pos, "tensor data_location: wire type %d", typ)
			}
			v, err := s.varint()
			external = DataLocation(int32(v)) == LocationExternal
			return err
		case fTensorRawData, fTensorFloatData, fTensorInt32Data, fTensorInt64Data:
			if typ == protowire.BytesType {
				n, err := s.length()
				if err != nil {
					return err
				}
				t.Offset, t.Length = s.pos, n
				s.pos += n
				return nil
			}
		}
		return s.skip(typ)
	})
	if err != nil {
		return t, err
	}
	if external {
		t.Offset, t.Length = 0, -1
		for _, e := range ext {
			var err error
			switch e.Key {
			case "location":
				t.Location = e.Value
			case "offset":
				t.Offset, err = strconv.ParseInt(e.Value, 10, 64)
			case "length":
				t.Length, err = strconv.ParseInt(e.Value, 10, 64)
			}
			if err != nil {
				return t, s.malformed(end, "initializer %q: external_data %s: %v", t.Name, e.Key, err)
			}
		}
		if t.Location == "" {
			return t, s.malformed(end, "initializer %q: external data without location", t.Name)
		}
	}
	return t, nil
}

// NumBytes returns the size of the initializer's data computed from its
// dims and type (0 when the type has no fixed size).
func (t InitializerInfo) NumBytes() int64 {
	n := int64(t.DataType.Size())
	for _, d := range t.Dims {
		n *= d
	}
	return n
}
