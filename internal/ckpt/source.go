package ckpt

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// Source is a modelgen.Source that serves a checkpoint's parameters where
// they lie: each contiguous parameter is an external reference into the
// checkpoint file (location Link, the file's name inside the component's
// folder), with no copy; only parameters that must change are read and
// returned in memory as float32 (a transposed text_projection, weights
// with LoRA deltas merged, float64 tensors). It records which parameters
// were asked for (Unused). A Source is safe for concurrent use.
type Source struct {
	parts map[Component]part
	// Link is the location written for external references: the name of
	// the checkpoint's link (or copy) inside each component's folder.
	Link map[Component]string

	mu   sync.Mutex
	used map[Component]map[string]bool
}

// part is where one component's parameters come from.
type part struct {
	file   *File
	params map[string]Param
	deltas map[string][]ModuleDelta
}

// NewSource returns a Source for the mapped components of f. link names,
// per component, the location of f (or of vae, for the VAE when vae is
// non-nil) relative to the component's folder. deltas are LoRA modules to
// merge (nil for none).
func NewSource(f *File, m *Mapping, vae *File, vaeMapping *Mapping, deltas map[Component]map[string][]ModuleDelta, link map[Component]string) *Source {
	s := &Source{parts: map[Component]part{}, Link: link, used: map[Component]map[string]bool{}}
	for c, ps := range m.Params {
		s.parts[c] = part{file: f, params: ps, deltas: deltas[c]}
	}
	if vae != nil {
		s.parts[VAE] = part{file: vae, params: vaeMapping.Params[VAE], deltas: deltas[VAE]}
	}
	return s
}

var onnxTypes = map[safetensors.DType]onnxpb.DataType{
	safetensors.F32: onnxpb.Float, safetensors.F16: onnxpb.Float16, safetensors.BF16: onnxpb.BFloat16,
}

// Param implements modelgen.Source.
func (s *Source) Param(component modelgen.Component, name string, shape []int64, _ modelgen.Init) (*onnxpb.Tensor, error) {
	c := Component(component)
	pt, ok := s.parts[c]
	if !ok {
		return nil, fmt.Errorf("ckpt: the checkpoint has no %s: %w", c, modelgen.ErrNoParam)
	}
	p, ok := pt.params[name]
	if !ok {
		return nil, fmt.Errorf("ckpt: %s %s is not in %s: %w", c, name, pt.file.Path(), modelgen.ErrNoParam)
	}
	if !slices.Equal(p.Shape, shape) {
		return nil, fmt.Errorf("ckpt: %s %s (%s) has shape %v, the architecture wants %v", c, name, p.Key, p.Shape, shape)
	}
	info, ok := pt.file.Lookup(p.Key)
	if !ok {
		return nil, fmt.Errorf("ckpt: %s: no tensor %s", pt.file.Path(), p.Key)
	}
	s.mu.Lock()
	if s.used[c] == nil {
		s.used[c] = map[string]bool{}
	}
	s.used[c][name] = true
	s.mu.Unlock()

	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	es := int64(info.DType.Size())
	off, size := info.Offset, info.Size
	if p.Rows[1] > 0 {
		rowBytes := info.Size / info.Shape[0]
		off += p.Rows[0] * rowBytes
		size = (p.Rows[1] - p.Rows[0]) * rowBytes
	}
	if size != n*es {
		return nil, fmt.Errorf("ckpt: %s %s: %d bytes of %s for shape %v", c, name, size, p.Key, shape)
	}
	typ, direct := onnxTypes[info.DType]
	ds := pt.deltas[name]
	if !info.DType.IsFloat() {
		return nil, fmt.Errorf("ckpt: %s %s: tensor %s is %s, not a float type", c, name, p.Key, info.DType)
	}
	if direct && !p.Transpose && len(ds) == 0 {
		return onnxpb.ExternalRef(name, typ, shape, s.Link[c], off, size)
	}
	b := make([]byte, size)
	if _, err := pt.file.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("ckpt: %s: reading %s: %w", pt.file.Path(), p.Key, err)
	}
	w := safetensors.ToFloat32(info.DType, b)
	if p.Transpose {
		rows, cols := shape[1], shape[0] // the file holds [rows, cols] = shapeᵀ
		t := make([]float32, len(w))
		for r := int64(0); r < rows; r++ {
			for k := int64(0); k < cols; k++ {
				t[k*rows+r] = w[r*cols+k]
			}
		}
		w = t
	}
	Merge(w, ds)
	return &onnxpb.Tensor{Name: name, DataType: onnxpb.Float, Dims: slices.Clone(shape), RawData: safetensors.FromFloat32(safetensors.F32, w)}, nil
}

// Unused returns the mapped parameters of the given components that no
// build asked for, sorted ("component: name (key)").
func (s *Source) Unused(components ...Component) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, c := range components {
		pt := s.parts[c]
		for _, name := range slices.Sorted(maps.Keys(pt.params)) {
			if !s.used[c][name] {
				out = append(out, fmt.Sprintf("%s: %s (%s)", c, name, pt.params[name].Key))
			}
		}
	}
	return out
}
