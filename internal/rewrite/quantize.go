package rewrite

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

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
//     ranges (and without StaticOnly, which keeps it float32),
//     DynamicQuantizeLinear → ConvInteger (uint8 × uint8, weights
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
