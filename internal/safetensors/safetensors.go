package safetensors

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"os"
	"slices"
	"strings"
	"unicode/utf8"
)

// MaxHeaderSize is the largest JSON header accepted (the reference
// implementation's limit).
const MaxHeaderSize = 100_000_000

// MetadataKey is the header entry that holds free-form string metadata
// instead of a tensor.
const MetadataKey = "__metadata__"

// DType is a safetensors element type, spelled as in the header ("F32").
type DType string

// The element types of the format.
const (
	F64    DType = "F64"
	F32    DType = "F32"
	F16    DType = "F16"
	BF16   DType = "BF16"
	F8E4M3 DType = "F8_E4M3"
	F8E5M2 DType = "F8_E5M2"
	I64    DType = "I64"
	I32    DType = "I32"
	I16    DType = "I16"
	I8     DType = "I8"
	U64    DType = "U64"
	U32    DType = "U32"
	U16    DType = "U16"
	U8     DType = "U8"
	Bool   DType = "BOOL"
)

// Size returns the size in bytes of one element, or 0 for an unknown type.
func (d DType) Size() int {
	switch d {
	case F64, I64, U64:
		return 8
	case F32, I32, U32:
		return 4
	case F16, BF16, I16, U16:
		return 2
	case F8E4M3, F8E5M2, I8, U8, Bool:
		return 1
	}
	return 0
}

// IsFloat reports whether d is F64, F32, F16 or BF16 (the types Float32s
// converts).
func (d DType) IsFloat() bool {
	return d == F64 || d == F32 || d == F16 || d == BF16
}

// Info describes one tensor of a file. Offset is the absolute byte offset of
// its data in the file and Size its length in bytes.
type Info struct {
	Name   string
	DType  DType
	Shape  []int64
	Offset int64
	Size   int64
}

// NumElements returns the product of the tensor's dimensions (1 for a
// scalar).
func (t Info) NumElements() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Header is a validated safetensors header.
type Header struct {
	// Tensors lists every tensor, sorted by name.
	Tensors []Info
	// Metadata is the __metadata__ entry (nil when absent).
	Metadata map[string]string
	// DataOffset is the absolute offset of the data section (8 + header
	// length).
	DataOffset int64

	index map[string]int
}

// Lookup returns the tensor named name.
func (h *Header) Lookup(name string) (Info, bool) {
	i, ok := h.index[name]
	if !ok {
		return Info{}, false
	}
	return h.Tensors[i], true
}

// FormatError is returned for a file that breaks the format's rules.
type FormatError struct {
	Path   string // the file, when known
	Reason string
}

func (e *FormatError) Error() string {
	if e.Path == "" {
		return "safetensors: " + e.Reason
	}
	return "safetensors: " + e.Path + ": " + e.Reason
}

func formatErr(format string, args ...any) error {
	return &FormatError{Reason: fmt.Sprintf(format, args...)}
}

// ReadHeader reads and validates the header of a safetensors file of size
// bytes read through r. It never allocates more than the header's length,
// which is checked against size and MaxHeaderSize first.
func ReadHeader(r io.ReaderAt, size int64) (*Header, error) {
	if size < 8 {
		return nil, formatErr("file of %d bytes is shorter than the 8-byte header length", size)
	}
	var lenBuf [8]byte
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, fmt.Errorf("safetensors: reading the header length: %w", err)
	}
	var n uint64
	for i := 7; i >= 0; i-- {
		n = n<<8 | uint64(lenBuf[i])
	}
	switch {
	case n > MaxHeaderSize:
		return nil, formatErr("header length %d exceeds the %d-byte limit (not a safetensors file?)", n, MaxHeaderSize)
	case n > uint64(size-8):
		return nil, formatErr("header length %d runs past the end of the %d-byte file", n, size)
	case n < 2:
		return nil, formatErr("header length %d is too short for a JSON object", n)
	}
	buf := make([]byte, n)
	if _, err := r.ReadAt(buf, 8); err != nil {
		return nil, fmt.Errorf("safetensors: reading the %d-byte header: %w", n, err)
	}
	return parseHeader(buf, size-8-int64(n))
}

// tensorJSON is one header entry as written; RawMessage fields tell a
// missing field from a zero one.
type tensorJSON struct {
	DType       json.RawMessage `json:"dtype"`
	Shape       json.RawMessage `json:"shape"`
	DataOffsets json.RawMessage `json:"data_offsets"`
}

// parseHeader validates the JSON header buf for a data section of dataSize
// bytes.
func parseHeader(buf []byte, dataSize int64) (*Header, error) {
	if buf[0] != '{' {
		return nil, formatErr("header does not start with '{' (not a safetensors file?)")
	}
	if !utf8.Valid(buf) {
		return nil, formatErr("header is not valid UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(buf))
	if _, err := dec.Token(); err != nil { // '{'
		return nil, formatErr("header: %v", err)
	}
	h := &Header{DataOffset: 8 + int64(len(buf)), index: map[string]int{}}
	seen := map[string]bool{}
	type span struct {
		begin, end int64
		name       string
	}
	var spans []span
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, formatErr("header: %v", err)
		}
		name, ok := tok.(string)
		if !ok {
			return nil, formatErr("header: key %v is not a string", tok)
		}
		if seen[name] {
			return nil, formatErr("header names %q twice", name)
		}
		seen[name] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, formatErr("header entry %q: %v", name, err)
		}
		if name == MetadataKey {
			if err := json.Unmarshal(raw, &h.Metadata); err != nil {
				return nil, formatErr("__metadata__ is not an object of strings: %v", err)
			}
			continue
		}
		info, err := parseTensor(name, raw)
		if err != nil {
			return nil, err
		}
		if info.Size > dataSize || info.Offset > dataSize-info.Size {
			return nil, formatErr("tensor %q: bytes [%d, %d) run past the %d-byte data section", name, info.Offset, info.Offset+info.Size, dataSize)
		}
		spans = append(spans, span{info.Offset, info.Offset + info.Size, name})
		info.Offset += h.DataOffset
		h.Tensors = append(h.Tensors, info)
	}
	if _, err := dec.Token(); err != nil { // '}'
		return nil, formatErr("header: %v", err)
	}
	if rest := buf[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) != 0 {
		return nil, formatErr("header has %d bytes of trailing data after the JSON object", len(rest))
	}
	// The byte ranges must tile the data section: no overlap, no hole.
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.begin, b.begin), cmp.Compare(a.end, b.end))
	})
	var end int64
	var last string
	for _, s := range spans {
		switch {
		case s.begin < end:
			return nil, formatErr("tensors %q and %q overlap (bytes %d and %d of the data section)", last, s.name, end, s.begin)
		case s.begin > end:
			return nil, formatErr("hole in the data section: bytes [%d, %d) before tensor %q belong to no tensor", end, s.begin, s.name)
		}
		end, last = s.end, s.name
	}
	if end != dataSize {
		return nil, formatErr("the tensors cover %d bytes of the %d-byte data section", end, dataSize)
	}
	slices.SortFunc(h.Tensors, func(a, b Info) int { return strings.Compare(a.Name, b.Name) })
	for i, t := range h.Tensors {
		h.index[t.Name] = i
	}
	return h, nil
}

// parseTensor validates one tensor entry; its Offset is relative to the data
// section.
func parseTensor(name string, raw json.RawMessage) (Info, error) {
	var tj tensorJSON
	if err := json.Unmarshal(raw, &tj); err != nil {
		return Info{}, formatErr("tensor %q: %v", name, err)
	}
	if tj.DType == nil || tj.Shape == nil || tj.DataOffsets == nil {
		return Info{}, formatErr("tensor %q: entry needs dtype, shape and data_offsets", name)
	}
	var dt string
	var shape, offs []uint64
	if err := json.Unmarshal(tj.DType, &dt); err != nil {
		return Info{}, formatErr("tensor %q: dtype: %v", name, err)
	}
	if err := json.Unmarshal(tj.Shape, &shape); err != nil || shape == nil {
		return Info{}, formatErr("tensor %q: shape is not a list of non-negative integers", name)
	}
	if err := json.Unmarshal(tj.DataOffsets, &offs); err != nil || len(offs) != 2 {
		return Info{}, formatErr("tensor %q: data_offsets is not a pair of non-negative integers", name)
	}
	d := DType(dt)
	if d.Size() == 0 {
		return Info{}, formatErr("tensor %q: unknown dtype %q", name, dt)
	}
	if offs[0] > offs[1] {
		return Info{}, formatErr("tensor %q: data_offsets [%d, %d] end before they begin", name, offs[0], offs[1])
	}
	const limit = 1 << 62
	n := uint64(d.Size())
	dims := make([]int64, len(shape))
	for i, s := range shape {
		hi, lo := bits.Mul64(n, s)
		if hi != 0 || lo > limit || s > limit {
			return Info{}, formatErr("tensor %q: shape %v is too large", name, shape)
		}
		n, dims[i] = lo, int64(s)
	}
	if offs[1] > limit {
		return Info{}, formatErr("tensor %q: data_offsets %v are too large", name, offs)
	}
	if got := offs[1] - offs[0]; got != n {
		return Info{}, formatErr("tensor %q: %s%v needs %d bytes, data_offsets [%d, %d] give %d", name, d, shape, n, offs[0], offs[1], got)
	}
	return Info{Name: name, DType: d, Shape: dims, Offset: int64(offs[0]), Size: int64(n)}, nil
}

// File is an open safetensors file. It is safe for concurrent use; the
// caller must Close it.
type File struct {
	*Header
	path string
	f    *os.File
	size int64
}

// Open opens the safetensors file at path and validates its header. Tensor
// data is read only when asked for.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, &FormatError{Path: path, Reason: "not a regular file"}
	}
	h, err := ReadHeader(f, st.Size())
	if err != nil {
		f.Close()
		if fe, ok := errors.AsType[*FormatError](err); ok && fe.Path == "" {
			fe.Path = path
			return nil, fe
		}
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	return &File{Header: h, path: path, f: f, size: st.Size()}, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Size returns the file's size in bytes.
func (f *File) Size() int64 { return f.size }

// Close closes the file. It is safe to call more than once.
func (f *File) Close() error {
	if f.f == nil {
		return nil
	}
	err := f.f.Close()
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// ReadAt reads len(p) bytes of the file at off (io.ReaderAt).
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

// info looks name up, or returns an error naming the file.
func (f *File) info(name string) (Info, error) {
	t, ok := f.Lookup(name)
	if !ok {
		return Info{}, fmt.Errorf("safetensors: %s: no tensor %q", f.path, name)
	}
	return t, nil
}

// Bytes returns a copy of the raw little-endian bytes of the tensor named
// name.
func (f *File) Bytes(name string) ([]byte, error) {
	t, err := f.info(name)
	if err != nil {
		return nil, err
	}
	b := make([]byte, t.Size)
	if _, err := f.f.ReadAt(b, t.Offset); err != nil {
		return nil, fmt.Errorf("safetensors: %s: reading %q: %w", f.path, name, err)
	}
	return b, nil
}

// Float32s returns the values of the float tensor named name (F32, F16,
// BF16 or F64), widened or rounded to float32.
func (f *File) Float32s(name string) ([]float32, error) {
	t, err := f.info(name)
	if err != nil {
		return nil, err
	}
	if !t.DType.IsFloat() {
		return nil, fmt.Errorf("safetensors: %s: tensor %q is %s, not a float type", f.path, name, t.DType)
	}
	b, err := f.Bytes(name)
	if err != nil {
		return nil, err
	}
	return ToFloat32(t.DType, b), nil
}
