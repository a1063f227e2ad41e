package onnxpb

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"google.golang.org/protobuf/encoding/protowire"
)

// Common external data file names.
const (
	// LegacyExternalFile is the name diffusers' legacy ONNX exporter gives
	// the UNet's external data.
	LegacyExternalFile = "weights.pb"
	// OptimumExternalFile is the name optimum's exporter uses.
	OptimumExternalFile = "model.onnx_data"
)

// maxProtoSize is the largest message protobuf implementations accept.
const maxProtoSize = 1<<31 - 1

// ExternalData tells WriteFile to store large initializers in a separate
// file next to the model, as ONNX external data.
type ExternalData struct {
	// File is the data file's name, relative to the model's directory
	// (e.g. LegacyExternalFile or OptimumExternalFile).
	File string
	// Threshold is the smallest data size in bytes moved to File; zero means
	// 1024. Smaller tensors stay inside the model.
	Threshold int64
	// Align, when positive, pads each tensor's offset in File to a multiple
	// of Align bytes (4096 lets ONNX Runtime map the data); zero packs them.
	Align int64
}

// WriteFile writes m to path, creating or truncating it. With ext non-nil,
// initializers of at least ext.Threshold bytes are written to
// filepath.Join(filepath.Dir(path), ext.File) and referenced from the model
// with data_location EXTERNAL and "location", "offset" and "length" entries.
// Tensor data is produced and written one tensor at a time (see
// Tensor.Fill), so the model's weights are never all in memory. Tensors that
// already are external (ExternalRef) keep their entries and their bytes are
// not touched; their locations must be relative and inside the model's
// folder. m itself is not modified. WriteFile is safe for concurrent use on distinct paths.
func WriteFile(path string, m *Model, ext *ExternalData) (err error) {
	if m == nil || m.Graph == nil {
		return fmt.Errorf("onnxpb: %s: model has no graph", path)
	}
	if ext != nil && (ext.File == "" || filepath.Base(ext.File) != ext.File) {
		return fmt.Errorf("onnxpb: %s: invalid external data file name %q", path, ext.File)
	}
	if err := checkExternalRefs(m.Graph); err != nil {
		return fmt.Errorf("onnxpb: %s: %w", path, err)
	}
	type plan struct {
		head   []byte // tensor fields except raw_data
		rawLen int64  // raw_data length written inline, -1 for none
		extOff int64  // offset in the external file, -1 when inline
		pad    int64  // zero bytes written before the data in the external file
	}
	plans := make([]plan, len(m.Graph.Initializer))
	graphSize := int64(len(appendGraph(nil, m.Graph, false)))
	var extSize int64
	for i, t := range m.Graph.Initializer {
		p := plan{rawLen: -1, extOff: -1}
		n := dataLen(t)
		threshold := int64(1024)
		if ext != nil && ext.Threshold > 0 {
			threshold = ext.Threshold
		}
		switch {
		case ext != nil && n >= threshold && n > 0:
			if ext.Align > 0 && extSize%ext.Align != 0 {
				p.pad = ext.Align - extSize%ext.Align
			}
			p.extOff = extSize + p.pad
			extSize = p.extOff + n
			h := *t
			h.RawData, h.FloatData, h.Int32Data, h.Int64Data, h.Fill = nil, nil, nil, nil, nil
			h.DataLocation = LocationExternal
			h.ExternalData = []StringEntry{
				{Key: "location", Value: ext.File},
				{Key: "offset", Value: strconv.FormatInt(p.extOff, 10)},
				{Key: "length", Value: strconv.FormatInt(n, 10)},
			}
			p.head = appendTensorHead(nil, &h)
		case t.Fill != nil || t.RawData != nil:
			p.head = appendTensorHead(nil, t)
			p.rawLen = tensorRawLen(t)
		default:
			p.head = appendTensor(nil, t)
		}
		size := int64(len(p.head))
		if p.rawLen >= 0 {
			size += int64(protowire.SizeTag(fTensorRawData)+protowire.SizeVarint(uint64(p.rawLen))) + p.rawLen
		}
		graphSize += int64(protowire.SizeTag(fGraphInitializer)+protowire.SizeVarint(uint64(size))) + size
		plans[i] = p
	}
	if graphSize > maxProtoSize {
		return fmt.Errorf("onnxpb: %s: model of %d bytes exceeds the 2 GiB protobuf limit; use external data", path, graphSize)
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("onnxpb: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("onnxpb: %w", cerr)
		}
	}()
	w := bufio.NewWriterSize(f, 1<<20)
	var xw *bufio.Writer
	if ext != nil {
		xf, err := os.Create(filepath.Join(filepath.Dir(path), ext.File))
		if err != nil {
			return fmt.Errorf("onnxpb: %w", err)
		}
		defer func() {
			if cerr := xf.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("onnxpb: %w", cerr)
			}
		}()
		xw = bufio.NewWriterSize(xf, 1<<20)
	}

	head := appendModelHead(nil, m)
	head = protowire.AppendTag(head, fModelGraph, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(graphSize))
	head = appendGraph(head, m.Graph, false)
	if _, err := w.Write(head); err != nil {
		return fmt.Errorf("onnxpb: %w", err)
	}
	var buf []byte
	for i, t := range m.Graph.Initializer {
		p := plans[i]
		size := int64(len(p.head))
		if p.rawLen >= 0 {
			size += int64(protowire.SizeTag(fTensorRawData)+protowire.SizeVarint(uint64(p.rawLen))) + p.rawLen
		}
		b := protowire.AppendTag(buf[:0], fGraphInitializer, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(size))
		b = append(b, p.head...)
		if p.rawLen >= 0 {
			b = protowire.AppendTag(b, fTensorRawData, protowire.BytesType)
			b = protowire.AppendVarint(b, uint64(p.rawLen))
		}
		buf = b
		if _, err := w.Write(b); err != nil {
			return fmt.Errorf("onnxpb: %w", err)
		}
		switch {
		case p.rawLen >= 0:
			if _, err := w.Write(tensorBytes(t)); err != nil {
				return fmt.Errorf("onnxpb: %w", err)
			}
		case p.extOff >= 0:
			if _, err := xw.Write(make([]byte, p.pad)); err != nil {
				return fmt.Errorf("onnxpb: %w", err)
			}
			if _, err := xw.Write(tensorBytes(t)); err != nil {
				return fmt.Errorf("onnxpb: %w", err)
			}
		}
	}
	if xw != nil {
		if err := xw.Flush(); err != nil {
			return fmt.Errorf("onnxpb: %w", err)
		}
	}
	if err := w.Flush(); err != nil {
		return fmt.Errorf("onnxpb: %w", err)
	}
	return nil
}

// dataLen returns the size of t's data as little-endian raw bytes, or 0 when
// it has none or cannot be moved to an external file.
func dataLen(t *Tensor) int64 {
	switch {
	case t.DataLocation == LocationExternal:
		return 0
	case t.Fill != nil || t.RawData != nil:
		return tensorRawLen(t)
	case len(t.FloatData) > 0 && t.DataType == Float:
		return 4 * int64(len(t.FloatData))
	case len(t.Int64Data) > 0 && t.DataType == Int64:
		return 8 * int64(len(t.Int64Data))
	case len(t.Int32Data) > 0 && t.DataType == Int32:
		return 4 * int64(len(t.Int32Data))
	}
	return 0
}

// tensorBytes returns t's data as little-endian raw bytes (see dataLen).
func tensorBytes(t *Tensor) []byte {
	switch {
	case t.Fill != nil:
		b := make([]byte, tensorRawLen(t))
		t.Fill(b)
		return b
	case t.RawData != nil:
		return t.RawData
	case len(t.FloatData) > 0:
		b := make([]byte, 4*len(t.FloatData))
		for i, v := range t.FloatData {
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
		}
		return b
	case len(t.Int64Data) > 0:
		b := make([]byte, 8*len(t.Int64Data))
		for i, v := range t.Int64Data {
			binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
		}
		return b
	case len(t.Int32Data) > 0:
		b := make([]byte, 4*len(t.Int32Data))
		for i, v := range t.Int32Data {
			binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
		}
		return b
	}
	return nil
}
