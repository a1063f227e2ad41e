package modelgen

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"

	"github.com/sdpipe/sdpipe/internal/half"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Builder assembles an ONNX graph node by node. Its parameters come from a
// Source (by default RandomSource, deterministic random values keyed by the
// seed and the parameter's name, so weights are reproducible and
// independent of the order in which the graph is built). The first Source
// or hook error is kept (Err) and later parameters are skipped; the Build
// functions return it. A Builder is not safe for concurrent use.
type Builder struct {
	src      Source
	comp     Component
	onModule ModuleHook
	err      error
	float    onnxpb.DataType // element type of float weights and activations
	g        *onnxpb.Graph
	n        int
	consts   map[string]string
	names    map[string]bool
	params   int64
}

// NewBuilder returns a Builder whose float parameters and constants have
// element type float (onnxpb.Float or onnxpb.Float16) and whose parameters
// are RandomSource{Seed: seed, Type: float}'s.
func NewBuilder(seed uint64, float onnxpb.DataType) *Builder {
	if float != onnxpb.Float && float != onnxpb.Float16 {
		panic("modelgen: NewBuilder: float type must be Float or Float16")
	}
	return &Builder{src: RandomSource{Seed: seed, Type: float}, float: float, g: &onnxpb.Graph{}, consts: map[string]string{}, names: map[string]bool{}}
}

// NewSourceBuilder returns a Builder for component whose parameters come
// from src, computing in float (onnxpb.Float or onnxpb.Float16), with hook
// (may be nil) called after each Linear and Conv module.
func NewSourceBuilder(src Source, component Component, float onnxpb.DataType, hook ModuleHook) (*Builder, error) {
	if float != onnxpb.Float && float != onnxpb.Float16 {
		return nil, fmt.Errorf("modelgen: float type %v not supported (float32 or float16)", float)
	}
	if src == nil {
		return nil, errors.New("modelgen: nil Source")
	}
	return &Builder{src: src, comp: component, onModule: hook, float: float, g: &onnxpb.Graph{}, consts: map[string]string{}, names: map[string]bool{}}, nil
}

// Err returns the first error of the Source or of a module hook, or nil.
func (b *Builder) Err() error { return b.err }

// Component returns the component whose parameters the builder asks for.
func (b *Builder) Component() Component { return b.comp }

// fail records err unless an earlier error is recorded.
func (b *Builder) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// Float returns the builder's float element type.
func (b *Builder) Float() onnxpb.DataType { return b.float }

// Params returns the number of elements of all parameters asked of the
// Source (Param) or added with AddInitializer (not counting small
// constants).
func (b *Builder) Params() int64 { return b.params }

// Graph returns the graph built so far (owned by the Builder).
func (b *Builder) Graph() *onnxpb.Graph { return b.g }

// Model wraps the graph in a model with the given default-domain opset.
func (b *Builder) Model(opset int64) *onnxpb.Model {
	return &onnxpb.Model{
		IRVersion:    8,
		ProducerName: "sdpipe-modelgen",
		OpsetImports: []onnxpb.OperatorSet{{Version: opset}},
		Graph:        b.g,
	}
}

// Input declares a graph input. A dim is a fixed size (int or int64) or a
// symbolic name (string).
func (b *Builder) Input(name string, typ onnxpb.DataType, dims ...any) string {
	b.g.Input = append(b.g.Input, valueInfo(name, typ, dims))
	return name
}

// Output declares value as a graph output named name (adding an Identity
// when the names differ).
func (b *Builder) Output(value, name string, typ onnxpb.DataType, dims ...any) {
	if value != name {
		b.g.Nodes = append(b.g.Nodes, &onnxpb.Node{OpType: "Identity", Input: []string{value}, Output: []string{name}, Name: name + "_identity"})
	}
	b.g.Output = append(b.g.Output, valueInfo(name, typ, dims))
}

func valueInfo(name string, typ onnxpb.DataType, dims []any) onnxpb.ValueInfo {
	v := onnxpb.ValueInfo{Name: name, ElemType: typ}
	for _, d := range dims {
		switch d := d.(type) {
		case int:
			v.Dims = append(v.Dims, onnxpb.Dim{Value: int64(d)})
		case int64:
			v.Dims = append(v.Dims, onnxpb.Dim{Value: d})
		case string:
			v.Dims = append(v.Dims, onnxpb.Dim{Param: d})
		default:
			panic(fmt.Sprintf("modelgen: bad dim %v of %s", d, name))
		}
	}
	return v
}

// Op adds a node with one output and returns the output's name.
func (b *Builder) Op(opType string, inputs []string, attrs ...*onnxpb.Attribute) string {
	return b.OpN(opType, inputs, 1, attrs...)[0]
}

// OpN adds a node with n outputs and returns their names.
func (b *Builder) OpN(opType string, inputs []string, n int, attrs ...*onnxpb.Attribute) []string {
	b.n++
	name := fmt.Sprintf("%s_%d", opType, b.n)
	outs := make([]string, n)
	for i := range outs {
		outs[i] = fmt.Sprintf("%s_out%d", name, i)
	}
	b.g.Nodes = append(b.g.Nodes, &onnxpb.Node{OpType: opType, Name: name, Input: inputs, Output: outs, Attribute: attrs})
	return outs
}

// Param adds a float parameter (initializer) named name with the given
// PyTorch shape, asking the builder's Source for it with init, and returns
// the graph value holding it in the builder's float type (the initializer
// itself, or a Cast of it when the Source gives another float type). Names
// must be unique. On a Source error Param records it (see Err) and returns
// a placeholder name.
func (b *Builder) Param(name string, shape []int64, init Init) string {
	return b.param(name, shape, nil, init)
}

// AddInitializer adds t (named, any element type) to the graph as it is and
// returns its name, for hooks that bring their own tensors (e.g. external
// references). Its elements are counted by Params when it is a float
// tensor.
func (b *Builder) AddInitializer(t *onnxpb.Tensor) string {
	if b.names[t.Name] {
		b.fail(fmt.Errorf("modelgen: duplicate initializer %s", t.Name))
		return t.Name
	}
	b.names[t.Name] = true
	if isFloat(t.DataType) {
		b.params += t.NumElements()
	}
	b.g.Initializer = append(b.g.Initializer, t)
	return t.Name
}

// param is Param with the initializer stored with dims (same element
// count and order as shape; nil means shape).
func (b *Builder) param(name string, shape, dims []int64, init Init) string {
	t, ok := b.source(name, shape, init)
	if !ok {
		return name
	}
	if dims != nil {
		t.Dims = dims
	}
	b.g.Initializer = append(b.g.Initializer, t)
	return b.castFloat(t)
}

// source asks the Source for a parameter and checks what it returns; the
// result is a copy named name that the builder may change.
func (b *Builder) source(name string, shape []int64, init Init) (*onnxpb.Tensor, bool) {
	if b.err != nil {
		return nil, false
	}
	if b.names[name] {
		b.fail(fmt.Errorf("modelgen: %s: duplicate parameter %s", b.comp, name))
		return nil, false
	}
	b.names[name] = true
	src, err := b.src.Param(b.comp, name, shape, init)
	if err != nil {
		b.fail(fmt.Errorf("modelgen: %s parameter %s: %w", b.comp, name, err))
		return nil, false
	}
	if src == nil {
		b.fail(fmt.Errorf("modelgen: %s parameter %s: the source returned no tensor", b.comp, name))
		return nil, false
	}
	if !isFloat(src.DataType) {
		b.fail(fmt.Errorf("modelgen: %s parameter %s: element type %v, want a float type", b.comp, name, src.DataType))
		return nil, false
	}
	if !slices.Equal(src.Dims, shape) {
		b.fail(fmt.Errorf("modelgen: %s parameter %s: shape %v, want %v", b.comp, name, src.Dims, shape))
		return nil, false
	}
	t := *src
	t.Name = name
	t.Dims = append([]int64(nil), shape...)
	b.params += t.NumElements()
	return &t, true
}

// castFloat returns t's name, or a Cast of it to the builder's float type.
func (b *Builder) castFloat(t *onnxpb.Tensor) string {
	if t.DataType == b.float {
		return t.Name
	}
	return b.Op("Cast", []string{t.Name}, AttrInt("to", int64(b.float)))
}

// hasData reports whether t's bytes are in memory (not external).
func hasData(t *onnxpb.Tensor) bool {
	return t.DataLocation != onnxpb.LocationExternal && (t.Fill != nil || t.RawData != nil || len(t.FloatData) > 0)
}

// transposed returns t (2-d, data in memory) stored transposed: a copy
// whose Fill writes the transpose of t's bytes.
func transposed(t *onnxpb.Tensor) *onnxpb.Tensor {
	rows, cols := t.Dims[0], t.Dims[1]
	size := int64(t.DataType.Size())
	fill := t.Fill
	raw := t.RawData
	floats := t.FloatData
	out := &onnxpb.Tensor{Name: t.Name, DataType: t.DataType, Dims: []int64{cols, rows}}
	out.Fill = func(dst []byte) {
		src := make([]byte, rows*cols*size)
		switch {
		case fill != nil:
			fill(src)
		case raw != nil:
			copy(src, raw)
		default:
			for i, v := range floats {
				binary.LittleEndian.PutUint32(src[4*i:], math.Float32bits(v))
			}
		}
		for r := int64(0); r < rows; r++ {
			for c := int64(0); c < cols; c++ {
				copy(dst[(c*rows+r)*size:(c*rows+r+1)*size], src[(r*cols+c)*size:])
			}
		}
	}
	return out
}

// Tensor adds a float initializer with the given values (converted to the
// builder's float type) and returns its name.
func (b *Builder) Tensor(name string, shape []int64, vals []float32) string {
	t := &onnxpb.Tensor{Name: name, Dims: shape, DataType: b.float}
	if t.NumElements() != int64(len(vals)) {
		panic("modelgen: Tensor " + name + ": shape does not match values")
	}
	float := b.float
	t.Fill = func(dst []byte) {
		for i, v := range vals {
			putFloat(dst, float, int64(i), v)
		}
	}
	b.g.Initializer = append(b.g.Initializer, t)
	return name
}

// Scalar returns a 0-d constant of the builder's float type (shared between
// uses).
func (b *Builder) Scalar(v float32) string {
	return b.shared(fmt.Sprintf("f:%v", v), func(name string) string { return b.Tensor(name, nil, []float32{v}) })
}

// Ints returns a 1-d int64 constant (shared between uses).
func (b *Builder) Ints(v ...int64) string {
	return b.shared(fmt.Sprintf("i:%v", v), func(name string) string {
		b.g.Initializer = append(b.g.Initializer, &onnxpb.Tensor{Name: name, Dims: []int64{int64(len(v))}, DataType: onnxpb.Int64, Int64Data: v})
		return name
	})
}

// shared returns the constant that key stands for, adding it under the
// next name "const/N" (add writes it and returns its name) at its first
// use.
func (b *Builder) shared(key string, add func(name string) string) string {
	if n, ok := b.consts[key]; ok {
		return n
	}
	name := fmt.Sprintf("const/%d", len(b.consts))
	b.consts[key] = name
	return add(name)
}

// AttrInt returns an INT attribute.
func AttrInt(name string, v int64) *onnxpb.Attribute {
	return &onnxpb.Attribute{Name: name, Type: onnxpb.AttrInt, I: v}
}

// AttrInts returns an INTS attribute.
func AttrInts(name string, v ...int64) *onnxpb.Attribute {
	return &onnxpb.Attribute{Name: name, Type: onnxpb.AttrInts, Ints: v}
}

// AttrFloat returns a FLOAT attribute.
func AttrFloat(name string, v float32) *onnxpb.Attribute {
	return &onnxpb.Attribute{Name: name, Type: onnxpb.AttrFloat, F: v}
}

// AttrString returns a STRING attribute.
func AttrString(name, v string) *onnxpb.Attribute {
	return &onnxpb.Attribute{Name: name, Type: onnxpb.AttrString, S: []byte(v)}
}

// AttrTensor returns a TENSOR attribute.
func AttrTensor(name string, t *onnxpb.Tensor) *onnxpb.Attribute {
	return &onnxpb.Attribute{Name: name, Type: onnxpb.AttrTensor, T: t}
}

func hashName(s string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(s))
	return h.Sum64()
}

// splitmix is the SplitMix64 generator.
type splitmix struct{ state uint64 }

func (r *splitmix) next() uint64 {
	r.state += 0x9e3779b97f4a7c15
	z := r.state
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// float64 returns a uniform value in [0, 1).
func (r *splitmix) float64() float64 { return float64(r.next()>>11) / (1 << 53) }

func putFloat(dst []byte, typ onnxpb.DataType, i int64, v float32) {
	switch typ {
	case onnxpb.Float16:
		binary.LittleEndian.PutUint16(dst[2*i:], half.FromFloat32(v))
		return
	case onnxpb.BFloat16:
		binary.LittleEndian.PutUint16(dst[2*i:], bfloatBits(v))
		return
	}
	binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
}

// bfloatBits rounds f to the nearest bfloat16 value (ties to even).
func bfloatBits(f float32) uint16 {
	x := math.Float32bits(f)
	if x&0x7fffffff > 0x7f800000 { // NaN stays NaN
		return uint16(x>>16) | 0x40
	}
	x += 0x7fff + (x>>16)&1
	return uint16(x >> 16)
}

// newModelBuilder checks cfg and opt and starts a builder for component.
func newModelBuilder(cfg Config, opt Options, component Component) (*Builder, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := opt.validate(); err != nil {
		return nil, err
	}
	return NewSourceBuilder(opt.source(), component, opt.floatType(), opt.OnModule)
}

// finish returns the builder's model, or its first error.
func (b *Builder) finish() (*onnxpb.Model, error) {
	if b.err != nil {
		return nil, b.err
	}
	return b.Model(opset), nil
}
