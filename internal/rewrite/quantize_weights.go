package rewrite

import (
	"encoding/binary"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// fillErrors collects the errors of Tensor.Fill functions, which cannot
// return them.
type fillErrors struct {
	mu  sync.Mutex
	err error
}

// Err reports the first error met while producing weight data (a weight
// file that could not be read); a model written while it is set is broken.
func (q *fillErrors) Err() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.err
}

func (q *fillErrors) fail(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err == nil {
		q.err = err
	}
}

// weightSource reads initializer data, from the model or from its external
// data files in dir.
type weightSource struct {
	dir string
}

// raw returns t's data as little-endian bytes.
func (s weightSource) raw(t *onnxpb.Tensor) ([]byte, error) {
	n := t.NumElements() * int64(t.DataType.Size())
	if t.DataLocation != onnxpb.LocationExternal {
		switch {
		case t.RawData != nil:
			if int64(len(t.RawData)) != n {
				return nil, fmt.Errorf("tensor %s: %d raw bytes, want %d", t.Name, len(t.RawData), n)
			}
			return t.RawData, nil
		case t.DataType == onnxpb.Float && int64(len(t.FloatData)) == t.NumElements():
			b := make([]byte, 0, n)
			for _, f := range t.FloatData {
				b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
			}
			return b, nil
		}
		return nil, fmt.Errorf("tensor %s: no data of type %s", t.Name, t.DataType)
	}
	loc, _ := t.External("location")
	if loc == "" || filepath.IsAbs(loc) || strings.Contains(filepath.ToSlash(loc), "../") {
		return nil, fmt.Errorf("tensor %s: bad external location %q", t.Name, loc)
	}
	var off int64
	if v, ok := t.External("offset"); ok {
		var err error
		if off, err = strconv.ParseInt(v, 10, 64); err != nil || off < 0 {
			return nil, fmt.Errorf("tensor %s: bad external offset %q", t.Name, v)
		}
	}
	if v, ok := t.External("length"); ok {
		if l, err := strconv.ParseInt(v, 10, 64); err != nil || l != n {
			return nil, fmt.Errorf("tensor %s: external length %q, want %d", t.Name, v, n)
		}
	}
	f, err := os.Open(filepath.Join(s.dir, loc))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("tensor %s: %w", t.Name, err)
	}
	return b, nil
}

// floats32 returns t's data as float32 (t float32 or float16).
func (s weightSource) floats32(t *onnxpb.Tensor) ([]float32, error) {
	b, err := s.raw(t)
	if err != nil {
		return nil, err
	}
	n := int(t.NumElements())
	out := make([]float32, n)
	switch t.DataType {
	case onnxpb.Float:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case onnxpb.Float16:
		for i := range out {
			out[i] = float32(half(binary.LittleEndian.Uint16(b[2*i:])))
		}
	default:
		return nil, fmt.Errorf("tensor %s is %s, not float", t.Name, t.DataType)
	}
	return out, nil
}

// channelScales returns the symmetric int8 scale (max |w| / 127) of each
// of the n output channels of w, where element i belongs to channel
// ch(i).
func channelScales(w []float32, n int, ch func(i int) int) []float32 {
	s := make([]float32, n)
	for i, v := range w {
		c := ch(i)
		s[c] = max(s[c], float32(math.Abs(float64(v))))
	}
	for c := range s {
		if s[c] == 0 {
			s[c] = 1
		}
		s[c] /= 127
	}
	return s
}

func quant(v, scale float32) int8 {
	q := math.RoundToEven(float64(v / scale))
	return int8(max(-127, min(127, q)))
}

func floatTensor(name string, dims []int64, v []float32) *onnxpb.Tensor {
	b := make([]byte, 0, 4*len(v))
	for _, f := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return &onnxpb.Tensor{Name: name, Dims: dims, DataType: onnxpb.Float, RawData: b}
}

func byteTensor(name string, typ onnxpb.DataType, dims []int64, v byte) *onnxpb.Tensor {
	t := &onnxpb.Tensor{Name: name, Dims: dims, DataType: typ}
	t.RawData = make([]byte, t.NumElements())
	for i := range t.RawData {
		t.RawData[i] = v
	}
	return t
}

// selfContained makes every external tensor of m inline data produced
// from the original file when written, so that the written model does not
// depend on the original's data files.
func selfContained(m *onnxpb.Model, src weightSource, sink *fillErrors) {
	for _, t := range m.Graph.Initializer {
		if t.DataLocation != onnxpb.LocationExternal {
			continue
		}
		orig := *t
		orig.ExternalData = slices.Clone(t.ExternalData)
		t.DataLocation, t.ExternalData = onnxpb.LocationDefault, nil
		t.Fill = func(dst []byte) {
			b, err := src.raw(&orig)
			if err != nil {
				sink.fail(err)
				return
			}
			copy(dst, b)
		}
	}
}

// int8Weights adds an int8 initializer holding t (reshaped by index
// mapping: element j of the new tensor is element from(j) of t) quantized
// with scale[ch(from(j))] and returns its name. With unsigned, the values
// are stored as uint8 with 128 added.
func (z *quantizer) int8Weights(t *onnxpb.Tensor, dims []int64, scale []float32, ch func(i int) int, from func(j int) int, unsigned bool) string {
	name := z.x.fresh(t.Name + "_int8")
	typ := onnxpb.Int8
	if unsigned {
		typ = onnxpb.Uint8
	}
	z.addDerived(t, name, dims, typ, func(dst []byte, w []float32) {
		for j := range dst {
			i := from(j)
			v := quant(w[i], scale[ch(i)])
			if unsigned {
				dst[j] = byte(int(v) + 128)
			} else {
				dst[j] = byte(v)
			}
		}
	})
	return name
}

// addDerived adds the initializer name, of dims and type typ, whose bytes
// fill computes from t's float32 values when the graph is written (t's
// data is read then, not held meanwhile); an error reading them fails the
// quantization.
func (z *quantizer) addDerived(t *onnxpb.Tensor, name string, dims []int64, typ onnxpb.DataType, fill func(dst []byte, vals []float32)) {
	orig := *t
	orig.ExternalData = slices.Clone(t.ExternalData)
	nt := &onnxpb.Tensor{Name: name, Dims: dims, DataType: typ}
	nt.Fill = func(dst []byte) {
		v, err := z.src.floats32(&orig)
		if err != nil {
			z.q.fail(err)
			return
		}
		fill(dst, v)
	}
	z.addInit(nt)
}

func (z *quantizer) addInit(t *onnxpb.Tensor) {
	z.x.g.Initializer = append(z.x.g.Initializer, t)
	z.x.inits[t.Name] = t
	z.x.names[t.Name] = true
}
