package rewrite

import (
	"encoding/binary"
	"errors"
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

// Quantization. Only the integer kernels that ONNX Runtime's CPU provider
// runs fast are written (bench -kernels measures them: uint8 activations
// times int8 weights; int8 × int8 MatMulInteger and ConvInteger with int8
// weights take slow paths):
//
//   - MatMul and Gemm with constant weights become
//     com.microsoft.DynamicQuantizeMatMul: the activations are quantized in
//     the call (per tensor, asymmetric uint8), the weights are int8 per
//     output column, a following bias Add is folded in.
//   - Conv with constant weights becomes, when Ranges holds its input and
//     output, QuantizeLinear → QLinearConv (uint8 × int8, weights per output
//     channel) → DequantizeLinear with the calibrated scales; without
//     ranges, DynamicQuantizeLinear → ConvInteger (uint8 × uint8, weights
//     per output channel, stored with zero point 128) → Cast → Mul → Add.
//
// Everything else (attention's activation × activation products, the
// normalisations, the elementwise ops) stays float32, as do the layers
// whose precision the output hangs on: a Conv reading a graph input or
// writing a graph output, and layers whose reduction is shorter than
// QuantizeOptions.MinReduction.

// Range is the interval a value was seen in during calibration.
type Range struct {
	Min float32 `json:"min"`
	Max float32 `json:"max"`
}

// QuantizeOptions chooses what Quantize converts.
type QuantizeOptions struct {
	// MatMul quantizes MatMul and Gemm nodes with constant weights.
	MatMul bool
	// Conv quantizes Conv nodes with constant weights.
	Conv bool
	// Ranges are calibrated ranges of values by name (see Calibrate):
	// a Conv whose input and output both have one is quantized statically
	// (QLinearConv); others dynamically (ConvInteger).
	Ranges map[string]Range
	// StaticOnly keeps a Conv without calibrated ranges in float32
	// instead of the dynamic ConvInteger form: ONNX Runtime's ConvInteger
	// (uint8 × uint8) is barely faster than the float32 Conv on the
	// machines measured (bench -kernels), so only QLinearConv pays.
	StaticOnly bool
	// MinReduction is the shortest reduction (a MatMul's K, a Conv's
	// input channels × kernel area) that is quantized; 0 means 64. Shorter
	// layers are cheap and, like an image's first convolution, sensitive.
	MinReduction int
}

func (o QuantizeOptions) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "int8 v1 matmul=%t conv=%t minred=%d", o.MatMul, o.Conv, o.minReduction())
	if o.StaticOnly {
		b.WriteString(" static-only")
	}
	names := make([]string, 0, len(o.Ranges))
	for n := range o.Ranges {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		r := o.Ranges[n]
		fmt.Fprintf(&b, "\n%s %08x %08x", n, math.Float32bits(r.Min), math.Float32bits(r.Max))
	}
	return b.String()
}

func (o QuantizeOptions) minReduction() int {
	if o.MinReduction > 0 {
		return o.MinReduction
	}
	return 64
}

// QuantizeReport says what Quantize did.
type QuantizeReport struct {
	MatMul    int // MatMul nodes now DynamicQuantizeMatMul
	Gemm      int // Gemm nodes now DynamicQuantizeMatMul
	ConvStat  int // Conv nodes now QLinearConv (calibrated)
	ConvDyn   int // Conv nodes now ConvInteger (dynamic)
	BiasFused int // bias Adds folded into DynamicQuantizeMatMul
	// Kept lists the weighted nodes left in float32, with the reason.
	Kept []string
	// WeightBytes is the size of the weights before and after (all
	// initializers).
	WeightBytesBefore, WeightBytesAfter int64
}

// String summarises the report.
func (r QuantizeReport) String() string {
	return fmt.Sprintf("int8: matmul×%d gemm×%d conv×%d (calibrated %d, dynamic %d), %d kept in float32, weights %.1f → %.1f MB",
		r.MatMul, r.Gemm, r.ConvStat+r.ConvDyn, r.ConvStat, r.ConvDyn, len(r.Kept),
		float64(r.WeightBytesBefore)/1e6, float64(r.WeightBytesAfter)/1e6)
}

// Changed reports whether any node was quantized.
func (r QuantizeReport) Changed() bool { return r.MatMul+r.Gemm+r.ConvStat+r.ConvDyn > 0 }

// Quantized is a model rewritten by Quantize. Its new weight tensors are
// produced lazily (onnxpb.Tensor.Fill) from the original weight files when
// the model is written: write it with onnxpb.WriteFile, then check Err.
type Quantized struct {
	Model  *onnxpb.Model
	Report QuantizeReport

	fillErrors
}

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

// attr returns n's attribute called name, or nil.
func attr(n *onnxpb.Node, name string) *onnxpb.Attribute {
	for _, a := range n.Attribute {
		if a.Name == name {
			return a
		}
	}
	return nil
}

func attrInt(n *onnxpb.Node, name string, def int64) int64 {
	if a := attr(n, name); a != nil {
		return a.I
	}
	return def
}

func attrFloat(n *onnxpb.Node, name string, def float32) float32 {
	if a := attr(n, name); a != nil {
		return a.F
	}
	return def
}

// quantizer holds the state of one Quantize call.
type quantizer struct {
	x    *graph
	q    *Quantized
	src  weightSource
	o    QuantizeOptions
	used map[string]int // initializer name → consumers left
	// dynamic and static activation quantizations already made, by value
	dql map[string][3]string
	ql  map[string][3]string
}

// Quantize rewrites m, in place, to run its weighted layers in int8 (see
// QuantizeOptions). dir is the folder of m's model file, where its
// external data files lie. The new weights are computed from the original
// ones when the returned model is written; the per-channel scales are
// computed now, so Quantize reads every weight it converts once.
func Quantize(m *onnxpb.Model, dir string, o QuantizeOptions) (*Quantized, error) {
	if m == nil || m.Graph == nil {
		return nil, errors.New("rewrite: model has no graph")
	}
	q := &Quantized{Model: m}
	z := &quantizer{x: newGraph(m.Graph), q: q, src: weightSource{dir: dir}, o: o,
		used: map[string]int{}, dql: map[string][3]string{}, ql: map[string][3]string{}}
	for _, t := range m.Graph.Initializer {
		q.Report.WeightBytesBefore += t.NumElements() * int64(t.DataType.Size())
	}
	for _, n := range m.Graph.Nodes {
		for _, in := range n.Input {
			if _, ok := z.x.inits[in]; ok {
				z.used[in]++
			}
		}
	}
	nodes := slices.Clone(m.Graph.Nodes)
	for _, n := range nodes {
		if z.x.removed[n] || (n.Domain != "" && n.Domain != "ai.onnx") {
			continue
		}
		var err error
		switch {
		case n.OpType == "MatMul" && o.MatMul:
			err = z.matMul(n)
		case n.OpType == "Gemm" && o.MatMul:
			err = z.gemm(n)
		case n.OpType == "Conv" && o.Conv:
			err = z.conv(n)
		}
		if err != nil {
			return nil, err
		}
	}
	z.x.compact()
	// drop the float weights no node reads any more
	live := m.Graph.Initializer[:0]
	for _, t := range m.Graph.Initializer {
		if z.used[t.Name] > 0 || !z.counted(t.Name) {
			live = append(live, t)
		}
	}
	m.Graph.Initializer = live
	if q.Report.Changed() && !slices.ContainsFunc(m.OpsetImports, func(s onnxpb.OperatorSet) bool { return s.Domain == msDomain }) {
		m.OpsetImports = append(m.OpsetImports, onnxpb.OperatorSet{Domain: msDomain, Version: 1})
	}
	for _, t := range m.Graph.Initializer {
		q.Report.WeightBytesAfter += t.NumElements() * int64(t.DataType.Size())
	}
	selfContained(m, z.src, &q.fillErrors)
	return q, nil
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

// counted reports whether name was an initializer read by a node when
// Quantize started (so that a count of zero means "no longer read").
func (z *quantizer) counted(name string) bool {
	_, ok := z.used[name]
	return ok
}

// release records that one consumer of initializer name is gone.
func (z *quantizer) release(name string) {
	if _, ok := z.used[name]; ok {
		z.used[name]--
	}
}

// weight returns the constant float tensor behind value v, or nil.
func (z *quantizer) weight(v string) *onnxpb.Tensor {
	t := z.x.inits[v]
	if t == nil || (t.DataType != onnxpb.Float && t.DataType != onnxpb.Float16) {
		return nil
	}
	return t
}

// castWeight is weight, also through a Cast to float32 of a float16
// initializer (how a graph computing in float32 reads fp16 weights).
func (z *quantizer) castWeight(v string) *onnxpb.Tensor {
	if c := z.x.op(v, "Cast"); c != nil && len(c.Input) == 1 && attrInt(c, "to", 0) == int64(onnxpb.Float) {
		return z.weight(c.Input[0])
	}
	return z.weight(v)
}

// matWeight is castWeight for a MatMul's second operand, also through a
// Transpose(perm 1,0) of a [n, k] weight (Linear's layout), reported by
// transposed.
func (z *quantizer) matWeight(v string) (t *onnxpb.Tensor, transposed bool) {
	if tr := z.x.op(v, "Transpose"); tr != nil && len(tr.Input) == 1 {
		if p := perm(tr); len(p) == 2 && p[0] == 1 && p[1] == 0 {
			if t := z.castWeight(tr.Input[0]); t != nil && len(t.Dims) == 2 {
				return t, true
			}
		}
		return nil, false
	}
	return z.castWeight(v), false
}

// drop removes n and then every producer that thereby lost its last use,
// keeping the initializer counts.
func (z *quantizer) drop(n *onnxpb.Node) {
	if z.x.removed[n] {
		return
	}
	z.x.removed[n] = true
	for _, in := range n.Input {
		z.release(in)
	}
	for _, in := range n.Input {
		p := z.x.producer[in]
		if p == nil || z.x.removed[p] {
			continue
		}
		dead := true
		for _, o := range p.Output {
			if z.x.used(o) {
				dead = false
			}
		}
		if dead {
			z.drop(p)
		}
	}
}

func (z *quantizer) keep(n *onnxpb.Node, why string) {
	z.q.Report.Kept = append(z.q.Report.Kept, fmt.Sprintf("%s %q: %s", n.OpType, n.Name, why))
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
	orig := *t
	orig.ExternalData = slices.Clone(t.ExternalData)
	nt := &onnxpb.Tensor{Name: name, Dims: dims, DataType: typ}
	nt.Fill = func(dst []byte) {
		w, err := z.src.floats32(&orig)
		if err != nil {
			z.q.fail(err)
			return
		}
		for j := range dst {
			i := from(j)
			v := quant(w[i], scale[ch(i)])
			if unsigned {
				dst[j] = byte(int(v) + 128)
			} else {
				dst[j] = byte(v)
			}
		}
	}
	z.addInit(nt)
	return name
}

func (z *quantizer) addInit(t *onnxpb.Tensor) {
	z.x.g.Initializer = append(z.x.g.Initializer, t)
	z.x.inits[t.Name] = t
	z.x.names[t.Name] = true
}

// bias returns the constant 1-D float tensor of n elements added to v by
// its only consumer, with that Add node, or nils.
func (z *quantizer) bias(v string, n int64) (*onnxpb.Node, *onnxpb.Tensor) {
	cs := z.x.live(v)
	if len(cs) != 1 || z.x.outputs[v] {
		return nil, nil
	}
	add := cs[0]
	if add.OpType != "Add" || (add.Domain != "" && add.Domain != "ai.onnx") || len(add.Input) != 2 {
		return nil, nil
	}
	b := z.weight(other(add, v))
	if b == nil || len(b.Dims) != 1 || b.Dims[0] != n || b.DataType != onnxpb.Float {
		return nil, nil
	}
	return add, b
}

// dynamicMatMul writes DynamicQuantizeMatMul(a, w [k, n]) (+ bias), taking
// over the output of last, and removes the nodes it replaces.
func (z *quantizer) dynamicMatMul(name, a string, w *onnxpb.Tensor, k, n int64, transposed bool, out string, replaced ...*onnxpb.Node) error {
	vals, err := z.src.floats32(w)
	if err != nil {
		return fmt.Errorf("rewrite: int8: %w", err)
	}
	var ch, from func(int) int
	if transposed { // w is [n, k] (Gemm transB): element i is row i/k
		ch = func(i int) int { return i / int(k) }
		from = func(j int) int { r, c := j/int(n), j%int(n); return c*int(k) + r }
	} else {
		ch = func(i int) int { return i % int(n) }
		from = func(j int) int { return j }
	}
	scale := channelScales(vals, int(n), ch)
	vals = nil
	wq := z.int8Weights(w, []int64{k, n}, scale, ch, from, false)
	ws := z.x.fresh(w.Name + "_scale")
	z.addInit(floatTensor(ws, []int64{n}, scale))
	wz := z.x.fresh(w.Name + "_zero")
	z.addInit(byteTensor(wz, onnxpb.Int8, []int64{n}, 0))
	inputs := []string{a, wq, ws, wz}
	y := replaced[len(replaced)-1].Output[0]
	if out != "" {
		inputs = append(inputs, out)
	} else if add, b := z.bias(y, n); add != nil {
		inputs = append(inputs, b.Name)
		z.q.Report.BiasFused++
		replaced = append(replaced, add)
		y = add.Output[0]
	}
	z.replace(replaced, &onnxpb.Node{Name: z.x.fresh(name + "_int8"), OpType: "DynamicQuantizeMatMul", Domain: msDomain,
		Input: inputs, Output: []string{y}})
	return nil
}

// replace removes the nodes old, whose last one produces value y =
// node.Output[0], and adds node in their place, keeping the initializer
// counts.
func (z *quantizer) replace(old []*onnxpb.Node, node *onnxpb.Node) {
	for _, in := range node.Input {
		if z.counted(in) {
			z.used[in]++
		}
	}
	z.x.add(node)
	for _, r := range old {
		z.drop(r)
	}
}

func (z *quantizer) matMul(n *onnxpb.Node) error {
	if len(n.Input) != 2 || len(n.Output) != 1 {
		return nil
	}
	w, trans := z.matWeight(n.Input[1])
	if w == nil {
		return nil // activation × activation (attention): stays float32
	}
	if len(w.Dims) != 2 {
		z.keep(n, fmt.Sprintf("weight of rank %d", len(w.Dims)))
		return nil
	}
	k, nn := w.Dims[0], w.Dims[1]
	if trans {
		k, nn = nn, k
	}
	if k < int64(z.o.minReduction()) {
		z.keep(n, fmt.Sprintf("reduction %d < %d", k, z.o.minReduction()))
		return nil
	}
	if z.x.constant(n.Input[0]) != nil {
		return nil // constant × constant: left to ORT's folding
	}
	z.q.Report.MatMul++
	return z.dynamicMatMul(n.Name, n.Input[0], w, k, nn, trans, "", n)
}

func (z *quantizer) gemm(n *onnxpb.Node) error {
	if len(n.Input) < 2 || len(n.Output) != 1 {
		return nil
	}
	w := z.castWeight(n.Input[1])
	if w == nil || len(w.Dims) != 2 {
		return nil
	}
	if attrInt(n, "transA", 0) != 0 || attrFloat(n, "alpha", 1) != 1 || attrFloat(n, "beta", 1) != 1 {
		z.keep(n, "Gemm with transA, alpha or beta")
		return nil
	}
	trans := attrInt(n, "transB", 0) != 0
	k, nn := w.Dims[0], w.Dims[1]
	if trans {
		k, nn = nn, k
	}
	if k < int64(z.o.minReduction()) {
		z.keep(n, fmt.Sprintf("reduction %d < %d", k, z.o.minReduction()))
		return nil
	}
	var c string
	if len(n.Input) > 2 && n.Input[2] != "" {
		b := z.weight(n.Input[2])
		if b == nil || len(b.Dims) != 1 || b.Dims[0] != nn || b.DataType != onnxpb.Float {
			z.keep(n, "Gemm bias is not a constant [N] float vector")
			return nil
		}
		c = b.Name
	}
	z.q.Report.Gemm++
	return z.dynamicMatMul(n.Name, n.Input[0], w, k, nn, trans, c, n)
}

// convAttrs copies the attributes QLinearConv and ConvInteger share with
// Conv.
func convAttrs(n *onnxpb.Node) []*onnxpb.Attribute {
	var as []*onnxpb.Attribute
	for _, a := range n.Attribute {
		switch a.Name {
		case "auto_pad", "dilations", "group", "kernel_shape", "pads", "strides":
			c := *a
			c.Ints = slices.Clone(a.Ints)
			as = append(as, &c)
		}
	}
	return as
}

// activation returns scale and zero point for a calibrated range,
// asymmetric uint8 with the range widened to hold 0.
func activation(r Range) (scale float32, zero byte) {
	lo, hi := min(float64(r.Min), 0), max(float64(r.Max), 0)
	if hi-lo < 1e-12 {
		return 1, 0
	}
	s := (hi - lo) / 255
	zp := math.Round(-lo / s)
	return float32(s), byte(max(0, min(255, zp)))
}

func (z *quantizer) conv(n *onnxpb.Node) error {
	if len(n.Input) < 2 || len(n.Output) != 1 {
		return nil
	}
	w := z.castWeight(n.Input[1])
	if w == nil {
		return nil
	}
	if len(w.Dims) != 4 {
		z.keep(n, fmt.Sprintf("weight of rank %d", len(w.Dims)))
		return nil
	}
	m := w.Dims[0]
	red := w.Dims[1] * w.Dims[2] * w.Dims[3]
	x, y := n.Input[0], n.Output[0]
	switch {
	case red < int64(z.o.minReduction()):
		z.keep(n, fmt.Sprintf("reduction %d < %d", red, z.o.minReduction()))
		return nil
	case slices.ContainsFunc(z.x.g.Input, func(v onnxpb.ValueInfo) bool { return v.Name == x }):
		z.keep(n, "reads a graph input")
		return nil
	case z.x.outputs[y]:
		z.keep(n, "writes a graph output")
		return nil
	}
	var bias *onnxpb.Tensor
	if len(n.Input) > 2 && n.Input[2] != "" {
		if bias = z.castWeight(n.Input[2]); bias == nil || bias.NumElements() != m {
			z.keep(n, "bias is not a constant float vector")
			return nil
		}
	}
	rx, okx := z.o.Ranges[x]
	ry, oky := z.o.Ranges[y]
	static := okx && oky
	if !static && z.o.StaticOnly {
		z.keep(n, "no calibrated range")
		return nil
	}
	vals, err := z.src.floats32(w)
	if err != nil {
		return fmt.Errorf("rewrite: int8: %w", err)
	}
	per := int(red)
	ch := func(i int) int { return i / per }
	scale := channelScales(vals, int(m), ch)
	vals = nil
	if static {
		z.staticConv(n, w, bias, scale, rx, ry)
	} else {
		z.dynamicConv(n, w, bias, scale)
	}
	z.drop(n)
	return nil
}

// staticConv writes QuantizeLinear → QLinearConv → DequantizeLinear.
func (z *quantizer) staticConv(n *onnxpb.Node, w, bias *onnxpb.Tensor, scale []float32, rx, ry Range) {
	m := w.Dims[0]
	x, y := n.Input[0], n.Output[0]
	xs, xz := activation(rx)
	qx, ok := z.ql[x]
	if !ok {
		qx[1] = z.x.fresh(x + "_scale")
		qx[2] = z.x.fresh(x + "_zero")
		z.addInit(floatTensor(qx[1], nil, []float32{xs}))
		z.addInit(byteTensor(qx[2], onnxpb.Uint8, nil, xz))
		qx[0] = z.x.fresh(x + "_u8")
		z.x.add(&onnxpb.Node{Name: z.x.fresh(x + "_quantize"), OpType: "QuantizeLinear", Input: []string{x, qx[1], qx[2]}, Output: []string{qx[0]}})
		z.ql[x] = qx
	}
	wq := z.int8Weights(w, slices.Clone(w.Dims), scale, func(i int) int { return i / int(w.NumElements()/m) }, func(j int) int { return j }, false)
	ws := z.x.fresh(w.Name + "_scale")
	z.addInit(floatTensor(ws, []int64{m}, scale))
	wz := z.x.fresh(w.Name + "_zero")
	z.addInit(byteTensor(wz, onnxpb.Int8, []int64{m}, 0))
	ys, yz := activation(ry)
	ysn, yzn := z.x.fresh(y+"_scale"), z.x.fresh(y+"_zero")
	z.addInit(floatTensor(ysn, nil, []float32{ys}))
	z.addInit(byteTensor(yzn, onnxpb.Uint8, nil, yz))
	inputs := []string{qx[0], qx[1], qx[2], wq, ws, wz, ysn, yzn}
	if bias != nil {
		// int32 bias in the accumulator's scale xs·ws
		bn := z.x.fresh(bias.Name + "_int32")
		orig := *bias
		orig.ExternalData = slices.Clone(bias.ExternalData)
		bt := &onnxpb.Tensor{Name: bn, Dims: []int64{m}, DataType: onnxpb.Int32}
		bt.Fill = func(dst []byte) {
			b, err := z.src.floats32(&orig)
			if err != nil {
				z.q.fail(err)
				return
			}
			for c, v := range b {
				q := math.Round(float64(v) / (float64(xs) * float64(scale[c])))
				q = max(math.MinInt32, min(math.MaxInt32, q))
				binary.LittleEndian.PutUint32(dst[4*c:], uint32(int32(q)))
			}
		}
		z.addInit(bt)
		inputs = append(inputs, bn)
	}
	qy := z.x.fresh(y + "_u8")
	z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_int8"), OpType: "QLinearConv", Input: inputs, Output: []string{qy}, Attribute: convAttrs(n)})
	z.x.add(&onnxpb.Node{Name: z.x.fresh(y + "_dequantize"), OpType: "DequantizeLinear", Input: []string{qy, ysn, yzn}, Output: []string{y}})
	z.q.Report.ConvStat++
}

// dynamicConv writes DynamicQuantizeLinear → ConvInteger → Cast → Mul →
// Add.
func (z *quantizer) dynamicConv(n *onnxpb.Node, w, bias *onnxpb.Tensor, scale []float32) {
	m := w.Dims[0]
	x, y := n.Input[0], n.Output[0]
	dq, ok := z.dql[x]
	if !ok {
		dq = [3]string{z.x.fresh(x + "_u8"), z.x.fresh(x + "_scale"), z.x.fresh(x + "_zero")}
		z.x.add(&onnxpb.Node{Name: z.x.fresh(x + "_quantize"), OpType: "DynamicQuantizeLinear", Input: []string{x}, Output: dq[:]})
		z.dql[x] = dq
	}
	per := int(w.NumElements() / m)
	wq := z.int8Weights(w, slices.Clone(w.Dims), scale, func(i int) int { return i / per }, func(j int) int { return j }, true)
	wz := z.x.fresh(w.Name + "_zero")
	z.addInit(byteTensor(wz, onnxpb.Uint8, nil, 128))
	acc := z.x.fresh(y + "_int32")
	z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_int8"), OpType: "ConvInteger", Input: []string{dq[0], wq, dq[2], wz}, Output: []string{acc}, Attribute: convAttrs(n)})
	accf := z.x.fresh(y + "_acc")
	z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_cast"), OpType: "Cast", Input: []string{acc}, Output: []string{accf},
		Attribute: []*onnxpb.Attribute{{Name: "to", Type: onnxpb.AttrInt, I: int64(onnxpb.Float)}}})
	ws := z.x.fresh(w.Name + "_scale")
	z.addInit(floatTensor(ws, []int64{1, m, 1, 1}, scale))
	s := z.x.fresh(y + "_scale")
	z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_scales"), OpType: "Mul", Input: []string{dq[1], ws}, Output: []string{s}})
	out := y
	if bias != nil {
		out = z.x.fresh(y + "_unbiased")
	}
	z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_rescale"), OpType: "Mul", Input: []string{accf, s}, Output: []string{out}})
	if bias != nil {
		bn := z.x.fresh(bias.Name + "_4d")
		orig := *bias
		orig.ExternalData = slices.Clone(bias.ExternalData)
		bt := &onnxpb.Tensor{Name: bn, Dims: []int64{1, m, 1, 1}, DataType: onnxpb.Float}
		bt.Fill = func(dst []byte) {
			b, err := z.src.floats32(&orig)
			if err != nil {
				z.q.fail(err)
				return
			}
			for c, v := range b {
				binary.LittleEndian.PutUint32(dst[4*c:], math.Float32bits(v))
			}
		}
		z.addInit(bt)
		z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_bias"), OpType: "Add", Input: []string{out, bn}, Output: []string{y}})
	}
	z.q.Report.ConvDyn++
}
