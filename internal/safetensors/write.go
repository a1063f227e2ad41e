package safetensors

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// WriteTensor is one tensor to write: its bytes are Data, or are produced by
// Fill into dst (len(dst) == the tensor's size) when Data is nil, so that a
// large file is written one tensor at a time.
type WriteTensor struct {
	Name  string
	DType DType
	Shape []int64
	Data  []byte
	Fill  func(dst []byte)
}

func (t WriteTensor) size() int64 {
	n := int64(t.DType.Size())
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// Write writes tensors (in name order) and metadata (nil for none) to w in
// the safetensors format, with the header padded with spaces to a multiple
// of 8 bytes as the reference writer does.
func Write(w io.Writer, tensors []WriteTensor, metadata map[string]string) error {
	ts := slices.Clone(tensors)
	slices.SortFunc(ts, func(a, b WriteTensor) int { return strings.Compare(a.Name, b.Name) })
	header := map[string]any{}
	if metadata != nil {
		header[MetadataKey] = metadata
	}
	var off int64
	for i, t := range ts {
		if t.DType.Size() == 0 {
			return fmt.Errorf("safetensors: tensor %q: unknown dtype %q", t.Name, t.DType)
		}
		if t.Name == MetadataKey || (i > 0 && ts[i-1].Name == t.Name) {
			return fmt.Errorf("safetensors: tensor name %q used twice or reserved", t.Name)
		}
		n := t.size()
		if t.Data != nil && int64(len(t.Data)) != n {
			return fmt.Errorf("safetensors: tensor %q: %d bytes for %s%v (want %d)", t.Name, len(t.Data), t.DType, t.Shape, n)
		}
		shape := t.Shape
		if shape == nil {
			shape = []int64{}
		}
		header[t.Name] = map[string]any{"dtype": t.DType, "shape": shape, "data_offsets": []int64{off, off + n}}
		off += n
	}
	js, err := json.Marshal(header) // map keys are written sorted
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	for len(js)%8 != 0 {
		js = append(js, ' ')
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var lenBuf [8]byte
	for i, n := 0, uint64(len(js)); i < 8; i, n = i+1, n>>8 {
		lenBuf[i] = byte(n)
	}
	bw.Write(lenBuf[:])
	bw.Write(js)
	var buf []byte
	for _, t := range ts {
		data := t.Data
		if data == nil {
			if n := t.size(); int64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			data = buf[:t.size()]
			clear(data)
			if t.Fill != nil {
				t.Fill(data)
			}
		}
		if _, err := bw.Write(data); err != nil {
			return fmt.Errorf("safetensors: %w", err)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// WriteFile writes a safetensors file at path atomically (a temporary file
// in the same folder, renamed into place), readable by all (mode 0644).
func WriteFile(path string, tensors []WriteTensor, metadata map[string]string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := Write(f, tensors, metadata); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}
