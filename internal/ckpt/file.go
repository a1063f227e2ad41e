package ckpt

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// File is an open file of named tensors: safetensors, or a PyTorch archive
// (.ckpt, .pt) read by the restricted unpickler. Tensors lie in the file as
// contiguous little-endian bytes at Info.Offset. A File is safe for
// concurrent use; the caller must Close it.
type File struct {
	// Format is "safetensors" or "pytorch".
	Format string
	// Tensors lists the file's tensors sorted by name.
	Tensors []safetensors.Info
	// Metadata is the safetensors __metadata__ (nil for none).
	Metadata map[string]string

	path  string
	f     *os.File
	size  int64
	index map[string]int
}

// Open opens the tensor file at path, telling its format from its content.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("ckpt: %s: not a regular file", path)
	}
	out := &File{path: path, f: f, size: st.Size()}
	var magic [8]byte
	n, _ := f.ReadAt(magic[:], 0)
	switch {
	case n >= 4 && bytes.Equal(magic[:4], []byte("PK\x03\x04")):
		out.Format = "pytorch"
		out.Tensors, err = readTorchArchive(f, st.Size())
	case n >= 2 && magic[0] == 0x80 && magic[1] <= 5:
		err = fmt.Errorf("a PyTorch file in the legacy (pre-1.6) serialization, which this loader does not read: re-save it as safetensors, e.g. python -c \"import torch, safetensors.torch as s; d = torch.load('%s', map_location='cpu', weights_only=True); s.save_file({k: v.contiguous() for k, v in d.get('state_dict', d).items() if isinstance(v, torch.Tensor)}, 'model.safetensors')\"", path)
	default:
		var h *safetensors.Header
		h, err = safetensors.ReadHeader(f, st.Size())
		if err == nil {
			out.Format, out.Tensors, out.Metadata = "safetensors", h.Tensors, h.Metadata
		}
	}
	if err != nil {
		f.Close()
		if fe, ok := errors.AsType[*safetensors.FormatError](err); ok {
			fe.Path = path
			return nil, fmt.Errorf("ckpt: %w", fe)
		}
		return nil, fmt.Errorf("ckpt: %s: %w", path, err)
	}
	slices.SortFunc(out.Tensors, func(a, b safetensors.Info) int { return strings.Compare(a.Name, b.Name) })
	out.index = make(map[string]int, len(out.Tensors))
	for i, t := range out.Tensors {
		out.index[t.Name] = i
	}
	return out, nil
}

// Path returns the path the file was opened with.
func (f *File) Path() string { return f.path }

// Size returns the file's size in bytes.
func (f *File) Size() int64 { return f.size }

// Close closes the file. It is safe to call more than once.
func (f *File) Close() error {
	if err := f.f.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return err
	}
	return nil
}

// Lookup returns the tensor named name.
func (f *File) Lookup(name string) (safetensors.Info, bool) {
	i, ok := f.index[name]
	if !ok {
		return safetensors.Info{}, false
	}
	return f.Tensors[i], true
}

// ReadAt reads len(p) bytes of the file at off (io.ReaderAt).
func (f *File) ReadAt(p []byte, off int64) (int, error) { return f.f.ReadAt(p, off) }

var _ io.ReaderAt = (*File)(nil)

// Bytes returns a copy of the raw bytes of the tensor named name.
func (f *File) Bytes(name string) ([]byte, error) {
	t, ok := f.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("ckpt: %s: no tensor %q", f.path, name)
	}
	b := make([]byte, t.Size)
	if _, err := f.f.ReadAt(b, t.Offset); err != nil {
		return nil, fmt.Errorf("ckpt: %s: reading %q: %w", f.path, name, err)
	}
	return b, nil
}

// Float32s returns the values of the float tensor named name (F32, F16,
// BF16 or F64) as float32.
func (f *File) Float32s(name string) ([]float32, error) {
	t, ok := f.Lookup(name)
	if !ok {
		return nil, fmt.Errorf("ckpt: %s: no tensor %q", f.path, name)
	}
	if !t.DType.IsFloat() {
		return nil, fmt.Errorf("ckpt: %s: tensor %q is %s, not a float type", f.path, name, t.DType)
	}
	b, err := f.Bytes(name)
	if err != nil {
		return nil, err
	}
	return safetensors.ToFloat32(t.DType, b), nil
}
