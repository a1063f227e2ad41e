package modelgen

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Builder assembles an ONNX graph node by node, with initializers whose data
// is generated lazily from a deterministic random stream keyed by the seed
// and the parameter's name, so weights are reproducible and independent of
// the order in which the graph is built. A Builder is not safe for
// concurrent use.
type Builder struct {
	seed   uint64
	float  onnxpb.DataType // element type of float weights and activations
	g      *onnxpb.Graph
	n      int
	consts map[string]string
	names  map[string]bool
	params int64
}

// NewBuilder returns a Builder whose float parameters and constants have
// element type float (onnxpb.Float or onnxpb.Float16).
func NewBuilder(seed uint64, float onnxpb.DataType) *Builder {
	if float != onnxpb.Float && float != onnxpb.Float16 {
		panic("modelgen: NewBuilder: float type must be Float or Float16")
	}
	return &Builder{seed: seed, float: float, g: &onnxpb.Graph{}, consts: map[string]string{}, names: map[string]bool{}}
}

// Float returns the builder's float element type.
func (b *Builder) Float() onnxpb.DataType { return b.float }

// Params returns the number of elements of all float parameters added with
// Param and Fill (not counting small constants).
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

// Init describes how a parameter's values are drawn: uniformly from
// Mean ± Std·√3 (so their standard deviation is Std).
type Init struct {
	Mean, Std float64
}

// Param adds a float parameter (initializer) named name with the given shape
// and distribution, and returns its name. Names must be unique.
func (b *Builder) Param(name string, shape []int64, init Init) string {
	if b.names[name] {
		panic("modelgen: duplicate parameter " + name)
	}
	b.names[name] = true
	t := &onnxpb.Tensor{Name: name, Dims: shape, DataType: b.float}
	n := t.NumElements()
	b.params += n
	key := b.seed ^ hashName(name)
	float := b.float
	t.Fill = func(dst []byte) {
		r := splitmix{state: key}
		a := init.Std * math.Sqrt(3)
		for i := int64(0); i < n; i++ {
			v := init.Mean + a*(2*r.float64()-1)
			putFloat(dst, float, i, float32(v))
		}
	}
	b.g.Initializer = append(b.g.Initializer, t)
	return name
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
	key := fmt.Sprintf("f:%v", v)
	if n, ok := b.consts[key]; ok {
		return n
	}
	name := fmt.Sprintf("const/%d", len(b.consts))
	b.consts[key] = name
	return b.Tensor(name, nil, []float32{v})
}

// Ints returns a 1-d int64 constant (shared between uses).
func (b *Builder) Ints(v ...int64) string {
	key := fmt.Sprintf("i:%v", v)
	if n, ok := b.consts[key]; ok {
		return n
	}
	name := fmt.Sprintf("const/%d", len(b.consts))
	b.consts[key] = name
	b.g.Initializer = append(b.g.Initializer, &onnxpb.Tensor{Name: name, Dims: []int64{int64(len(v))}, DataType: onnxpb.Int64, Int64Data: v})
	return name
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
	if typ == onnxpb.Float16 {
		binary.LittleEndian.PutUint16(dst[2*i:], halfBits(v))
		return
	}
	binary.LittleEndian.PutUint32(dst[4*i:], math.Float32bits(v))
}

// halfBits rounds f to the nearest IEEE half-precision value (ties to
// even), saturating to ±Inf.
func halfBits(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16(x>>16) & 0x8000
	exp := int32(x>>23) & 0xff
	mant := x & 0x7fffff
	switch {
	case exp == 0xff:
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp > 142:
		return sign | 0x7c00
	case exp >= 113:
		h := uint32(exp-112)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	case exp >= 102:
		m := mant | 0x800000
		shift := uint32(126 - exp)
		h := m >> shift
		rest := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rest > half || (rest == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	return sign
}

// newModelBuilder checks cfg and opt and starts a builder for one of their
// components.
func newModelBuilder(cfg Config, opt Options) (*Builder, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := opt.validate(); err != nil {
		return nil, err
	}
	return NewBuilder(opt.Seed, opt.floatType()), nil
}
