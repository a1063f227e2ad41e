package modelgen

import (
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// AttentionForm selects how attention is written into the graph.
type AttentionForm int

const (
	// Efficient is MatMul → Softmax → MatMul over [batch, heads, N, d], with
	// the 1/√d scale applied to the queries (one side) before the first
	// MatMul.
	Efficient AttentionForm = iota
	// Baddbmm is the form the diffusers converter produced with torch < 2.0:
	// heads folded into the batch ([batch·heads, N, d]) and the scores
	// computed as baddbmm(empty, q, kᵀ, beta=0, alpha=scale), i.e.
	// ConstantOfShape zeros · 0 + MatMul(q, kᵀ) · scale, materialising
	// [batch·heads, N, N] twice. Same weights, same result, slower.
	Baddbmm
)

// String returns "efficient" or "baddbmm".
func (f AttentionForm) String() string {
	if f == Baddbmm {
		return "baddbmm"
	}
	return "efficient"
}

// Gains for the last layer of residual branches, keeping the residual
// stream's variance from growing too fast with depth.
const (
	residualGain = 0.5
	biasStd      = 0.02
	normStd      = 0.05
)

// linear is torch.nn.Linear: x·Wᵀ (+ b) with W of PyTorch shape [out, in].
// A weight held in memory is stored transposed, [in, out], the layout
// exported MatMuls use; an external one is transposed in the graph.
func (b *Builder) linear(x, name string, in, out int, bias bool, gain float64) string {
	w := b.linearWeight(name+".weight", in, out, Init{Std: gain / math.Sqrt(float64(in)), Transposed: true})
	y := b.Op("MatMul", []string{x, w})
	if bias {
		y = b.Op("Add", []string{y, b.Param(name+".bias", []int64{int64(out)}, Init{Std: biasStd})})
	}
	return b.hook(Module{Name: name, Kind: Linear, In: in, Out: out, Bias: bias}, x, y)
}

// linearWeight returns a Linear weight [out, in] as a graph value of shape
// [in, out].
func (b *Builder) linearWeight(name string, in, out int, init Init) string {
	t, ok := b.source(name, []int64{int64(out), int64(in)}, init)
	if !ok {
		return name
	}
	if hasData(t) {
		st := transposed(t)
		b.g.Initializer = append(b.g.Initializer, st)
		return b.castFloat(st)
	}
	b.g.Initializer = append(b.g.Initializer, t)
	return b.Op("Transpose", []string{b.castFloat(t)}, AttrInts("perm", 1, 0))
}

// hook calls the module hook, if any, and returns the value replacing y.
func (b *Builder) hook(m Module, x, y string) string {
	if b.onModule == nil || b.err != nil {
		return y
	}
	m.Component = b.comp
	out, err := b.onModule(b, m, x, y)
	if err != nil {
		b.fail(fmt.Errorf("modelgen: %s module %s: %w", b.comp, m.Name, err))
		return y
	}
	if out == "" {
		b.fail(fmt.Errorf("modelgen: %s module %s: the hook returned no value", b.comp, m.Name))
		return y
	}
	return out
}

// conv is a 2-d convolution with a k×k kernel, stride and symmetric padding.
func (b *Builder) conv(x, name string, in, out, k, stride, pad int, gain float64) string {
	p := int64(pad)
	return b.convPads(x, name, in, out, k, stride, []int64{p, p, p, p}, gain)
}

// convPads is conv with explicit pads [top, left, bottom, right].
func (b *Builder) convPads(x, name string, in, out, k, stride int, pads []int64, gain float64) string {
	return b.convFull(x, name, in, out, k, stride, pads, gain, true)
}

// convFull is convPads with or without a bias.
func (b *Builder) convFull(x, name string, in, out, k, stride int, pads []int64, gain float64, bias bool) string {
	inputs := []string{x, b.Param(name+".weight", []int64{int64(out), int64(in), int64(k), int64(k)}, Init{Std: gain / math.Sqrt(float64(in*k*k))})}
	if bias {
		inputs = append(inputs, b.Param(name+".bias", []int64{int64(out)}, Init{Std: biasStd}))
	}
	y := b.Op("Conv", inputs,
		AttrInts("kernel_shape", int64(k), int64(k)),
		AttrInts("strides", int64(stride), int64(stride)),
		AttrInts("pads", pads...))
	pad := int(pads[0])
	for _, p := range pads[1:] {
		if int(p) != pad {
			pad = -1
		}
	}
	return b.hook(Module{Name: name, Kind: Conv, In: in, Out: out, Bias: bias, Kernel: k, Stride: stride, Pad: pad}, x, y)
}

// groupNorm is GroupNorm over [b, c, h, w], written as torch exports it:
// Reshape to [b, groups, -1], InstanceNormalization, Reshape back, then the
// per-channel affine.
func (b *Builder) groupNorm(x, name string, c, groups int, eps float32) string {
	if c%groups != 0 {
		panic(fmt.Sprintf("modelgen: %s: %d channels not divisible into %d groups", name, c, groups))
	}
	ones := b.constFill(fmt.Sprintf("const/in_scale_%d", groups), groups, 1)
	zeros := b.constFill(fmt.Sprintf("const/in_bias_%d", groups), groups, 0)
	r := b.Op("Reshape", []string{x, b.Ints(0, int64(groups), -1)})
	n := b.Op("InstanceNormalization", []string{r, ones, zeros}, AttrFloat("epsilon", eps))
	y := b.Op("Reshape", []string{n, b.Op("Shape", []string{x})})
	gamma := b.param(name+".weight", []int64{int64(c)}, []int64{int64(c), 1, 1}, Init{Mean: 1, Std: normStd})
	beta := b.param(name+".bias", []int64{int64(c)}, []int64{int64(c), 1, 1}, Init{Std: normStd})
	return b.Op("Add", []string{b.Op("Mul", []string{y, gamma}), beta})
}

// constFill returns a cached 1-d float constant of n copies of v.
func (b *Builder) constFill(name string, n int, v float32) string {
	if c, ok := b.consts[name]; ok {
		return c
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = v
	}
	b.consts[name] = name
	return b.Tensor(name, []int64{int64(n)}, vals)
}

// layerNorm normalizes over the last axis (LayerNormalization, opset 17).
func (b *Builder) layerNorm(x, name string, c int, eps float32) string {
	gamma := b.Param(name+".weight", []int64{int64(c)}, Init{Mean: 1, Std: normStd})
	beta := b.Param(name+".bias", []int64{int64(c)}, Init{Std: normStd})
	return b.Op("LayerNormalization", []string{x, gamma, beta}, AttrInt("axis", -1), AttrFloat("epsilon", eps))
}

func (b *Builder) silu(x string) string {
	return b.Op("Mul", []string{x, b.Op("Sigmoid", []string{x})})
}

func (b *Builder) quickGELU(x string) string {
	return b.Op("Mul", []string{x, b.Op("Sigmoid", []string{b.Op("Mul", []string{x, b.Scalar(1.702)})})})
}

// gelu is the exact (erf) GELU.
func (b *Builder) gelu(x string) string {
	e := b.Op("Erf", []string{b.Op("Div", []string{x, b.Scalar(float32(math.Sqrt2))})})
	return b.Op("Mul", []string{b.Op("Mul", []string{x, b.Op("Add", []string{e, b.Scalar(1)})}), b.Scalar(0.5)})
}

// attnSpec describes one multi-head attention layer.
type attnSpec struct {
	name               string // parameter prefix
	q, k, v, out       string // projection names under name
	dim, ctxDim, heads int
	qkvBias            bool
	mask               string // additive mask broadcast over the scores, or ""
	form               AttentionForm
	outGain            float64 // gain of the output projection; 0 means residualGain
	upcast             bool    // float32 scores and softmax in a float16 graph
}

// attention projects x (queries) and ctx (keys and values), both
// [b, n, dim] / [b, m, ctxDim], and returns the output projection
// [b, n, dim].
func (b *Builder) attention(x, ctx string, s attnSpec) string {
	dh := s.dim / s.heads
	q := b.linear(x, s.name+"."+s.q, s.dim, s.dim, s.qkvBias, 1)
	k := b.linear(ctx, s.name+"."+s.k, s.ctxDim, s.dim, s.qkvBias, 1)
	v := b.linear(ctx, s.name+"."+s.v, s.ctxDim, s.dim, s.qkvBias, 1)
	split := b.Ints(0, 0, int64(s.heads), int64(dh))
	scale := b.Scalar(float32(1 / math.Sqrt(float64(dh))))
	// upcast_attention in a float16 graph: scores and softmax in float32.
	up := s.upcast && b.float != onnxpb.Float
	toF32 := func(x string) string {
		if !up {
			return x
		}
		return b.Op("Cast", []string{x}, AttrInt("to", int64(onnxpb.Float)))
	}
	back := func(x string) string {
		if !up {
			return x
		}
		return b.Op("Cast", []string{x}, AttrInt("to", int64(b.float)))
	}
	if up {
		scale = b.scalar32(float32(1 / math.Sqrt(float64(dh))))
	}
	var o string
	switch s.form {
	case Efficient:
		qh := b.Op("Transpose", []string{b.Op("Reshape", []string{q, split})}, AttrInts("perm", 0, 2, 1, 3))
		kh := b.Op("Transpose", []string{b.Op("Reshape", []string{k, split})}, AttrInts("perm", 0, 2, 3, 1))
		vh := b.Op("Transpose", []string{b.Op("Reshape", []string{v, split})}, AttrInts("perm", 0, 2, 1, 3))
		scores := b.Op("MatMul", []string{b.Op("Mul", []string{toF32(qh), scale}), toF32(kh)})
		if s.mask != "" {
			scores = b.Op("Add", []string{scores, toF32(s.mask)})
		}
		p := back(b.Op("Softmax", []string{scores}, AttrInt("axis", -1)))
		o = b.Op("Transpose", []string{b.Op("MatMul", []string{p, vh})}, AttrInts("perm", 0, 2, 1, 3))
	case Baddbmm:
		// [b, n, dim] → [b, n, h, d] → [b, h, n, d] → [b·h, n, d]
		fold := func(t string) (string, string) {
			n := b.Op("Shape", []string{t}, AttrInt("start", 1), AttrInt("end", 2))
			shape := b.Op("Concat", []string{b.Ints(-1), n, b.Ints(int64(dh))}, AttrInt("axis", 0))
			th := b.Op("Transpose", []string{b.Op("Reshape", []string{t, split})}, AttrInts("perm", 0, 2, 1, 3))
			return b.Op("Reshape", []string{th, shape}), n
		}
		q3, n := fold(q)
		k3, m := fold(k)
		v3, _ := fold(v)
		bh := b.Op("Shape", []string{q3}, AttrInt("start", 0), AttrInt("end", 1))
		zero := b.zeroTensor()
		zeroScalar := b.Scalar(0)
		if up {
			zero = &onnxpb.Tensor{Dims: []int64{1}, DataType: onnxpb.Float, RawData: make([]byte, 4)}
			zeroScalar = b.scalar32(0)
		}
		empty := b.Op("ConstantOfShape", []string{b.Op("Concat", []string{bh, n, m}, AttrInt("axis", 0))},
			AttrTensor("value", zero))
		kt := b.Op("Transpose", []string{k3}, AttrInts("perm", 0, 2, 1))
		scores := b.Op("Add", []string{
			b.Op("Mul", []string{empty, zeroScalar}),
			b.Op("Mul", []string{b.Op("MatMul", []string{toF32(q3), toF32(kt)}), scale}),
		})
		if s.mask != "" {
			scores = b.Op("Add", []string{scores, toF32(s.mask)})
		}
		p := back(b.Op("Softmax", []string{scores}, AttrInt("axis", -1)))
		o3 := b.Op("MatMul", []string{p, v3}) // [b·h, n, d]
		unfold := b.Op("Concat", []string{b.Ints(-1, int64(s.heads)), n, b.Ints(int64(dh))}, AttrInt("axis", 0))
		o = b.Op("Transpose", []string{b.Op("Reshape", []string{o3, unfold})}, AttrInts("perm", 0, 2, 1, 3))
	default:
		panic("modelgen: unknown attention form")
	}
	o = b.Op("Reshape", []string{o, b.Ints(0, 0, int64(s.dim))})
	gain := s.outGain
	if gain == 0 {
		gain = residualGain
	}
	return b.linear(o, s.name+"."+s.out, s.dim, s.dim, true, gain)
}

// scalar32 returns a 0-d float32 constant whatever the builder's float
// type (shared between uses).
func (b *Builder) scalar32(v float32) string {
	return b.shared(fmt.Sprintf("f32:%v", v), func(name string) string { return b.float32Tensor(name, nil, []float32{v}) })
}

// zeroTensor is a one-element zero of the builder's float type, for
// ConstantOfShape.
func (b *Builder) zeroTensor() *onnxpb.Tensor {
	t := &onnxpb.Tensor{Dims: []int64{1}, DataType: b.float}
	t.RawData = make([]byte, b.float.Size())
	return t
}
