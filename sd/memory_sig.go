package sd

import (
	"slices"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// memSignature is what a component's graph says about the memory one of
// its calls needs, read from the file's nodes and weight shapes: its
// attention layers (heads, resolution level, self or cross) and the widest
// activation (channels) at each resolution level. A level is a factor of 2
// from the component's input resolution: +1 after a stride-2 convolution,
// -1 after an upsampling Resize.
type memSignature struct {
	elem  int64            // bytes per activation value (4 for float32)
	self  []attnLayer      // attention over the tokens of a level
	cross []attnLayer      // attention of a level's tokens over the text
	fused []attnLayer      // com.microsoft attention kernels: no score tensor
	width map[int]int64    // level → the most channels of a value there
	ops   map[string]int64 // op type → count, for the report
}

// attnLayer is one attention layer: heads at a resolution level.
type attnLayer struct {
	level int
	heads int64
}

// analyze reads a component's memory signature from its structure.
func analyze(st *onnxpb.Structure) *memSignature {
	sig := &memSignature{elem: 4, width: map[int]int64{}, ops: map[string]int64{}}
	if len(st.Inputs) > 0 {
		if n := int64(st.Inputs[0].ElemType.Size()); n > 0 {
			sig.elem = max(n, 4) // fp16 models run in fp32 on the CPU for most ops
		}
	}
	g := newGraphIndex(st)
	level := 0
	levels := make([]int, len(st.Nodes))
	for i, n := range st.Nodes {
		sig.ops[n.OpType]++
		switch n.OpType {
		case "Conv", "ConvInteger", "QLinearConv": // int8 (rewrite.Quantize) as float32
			if w := g.dims(n, weightInput(n.OpType)); len(w) == 4 {
				sig.widen(level, w[1]) // its input's channels, at the input's level
				if stride2(n) {
					level++
				}
				sig.widen(level, w[0])
			} else if stride2(n) {
				level++
			}
		case "ConvTranspose":
			if stride2(n) {
				level--
			}
		case "Resize", "Upsample":
			level--
		case "MultiHeadAttention", "Attention", "GroupQueryAttention":
			// ONNX Runtime's kernels compute the scores in blocks
			// (flash attention on the CPU): their memory grows with the
			// tokens, not their square, and the activations cover it
			sig.fused = append(sig.fused, attnLayer{level: level, heads: attrInt(n, "num_heads")})
		case "MatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "QLinearMatMul":
			if w := g.dims(n, weightInput(n.OpType)); len(w) == 2 {
				out := w[1]
				if n.OpType == "Gemm" && attrInt(n, "transB") == 1 {
					out = w[0]
				}
				sig.widen(level, max(out, w[0]))
			}
		}
		levels[i] = level
	}
	for i, n := range st.Nodes {
		if n.OpType != "Softmax" {
			continue
		}
		heads, cross, ok := g.attention(n)
		if !ok {
			continue
		}
		a := attnLayer{level: levels[i], heads: heads}
		if cross {
			sig.cross = append(sig.cross, a)
		} else {
			sig.self = append(sig.self, a)
		}
	}
	return sig
}

// weightInput is the input that holds the weight of a convolution or a
// matrix product: 1 but for the QLinear forms, whose inputs interleave
// scales and zero points (x, x_scale, x_zero_point, w, ...). Without the
// quantized forms an int8 UNet's estimate missed its convolutions' widths
// and stride-2 levels: 0.1 GiB against the 0.7 GiB measured for a 1024²
// SDXL call.
func weightInput(op string) int {
	if op == "QLinearConv" || op == "QLinearMatMul" {
		return 3
	}
	return 1
}

func (s *memSignature) widen(level int, c int64) {
	s.width[level] = max(s.width[level], c)
}

func stride2(n *onnxpb.Node) bool {
	for _, a := range n.Attribute {
		if a.Name == "strides" {
			return slices.Contains(a.Ints, 2)
		}
	}
	return false
}

func attrInt(n *onnxpb.Node, name string) int64 {
	for _, a := range n.Attribute {
		if a.Name == name {
			return a.I
		}
	}
	return 0
}

// graphIndex answers questions about a graph's values.
type graphIndex struct {
	st       *onnxpb.Structure
	producer map[string]*onnxpb.Node
	inits    map[string][]int64 // initializer → dims
}

func newGraphIndex(st *onnxpb.Structure) *graphIndex {
	g := &graphIndex{st: st, producer: map[string]*onnxpb.Node{}, inits: map[string][]int64{}}
	for _, n := range st.Nodes {
		for _, o := range n.Output {
			g.producer[o] = n
		}
	}
	for _, t := range st.Initializers {
		g.inits[t.Name] = t.Dims
	}
	return g
}

// dims returns the dims of n's i-th input when it is an initializer.
func (g *graphIndex) dims(n *onnxpb.Node, i int) []int64 {
	if i >= len(n.Input) {
		return nil
	}
	return g.inits[n.Input[i]]
}

// ints returns the value of a small integer value: an initializer, a
// Constant, or a Concat or Unsqueeze of them; unknown parts are -1<<62.
func (g *graphIndex) ints(v string, depth int) []int64 {
	if x, ok := g.st.Ints[v]; ok {
		return x
	}
	n := g.producer[v]
	if n == nil || depth > 8 {
		return nil
	}
	switch n.OpType {
	case "Constant":
		for _, a := range n.Attribute {
			if x, ok := a.Ints64(); ok {
				return x
			}
			if a.Name == "value_ints" {
				return a.Ints
			}
		}
	case "Concat":
		var out []int64
		for _, in := range n.Input {
			x := g.ints(in, depth+1)
			if x == nil {
				x = []int64{unknownInt} // a dynamic part: one element, as in the shapes exporters write
			}
			out = append(out, x...)
		}
		return out
	case "Unsqueeze", "Cast", "Identity":
		return g.ints(n.Input[0], depth+1)
	}
	return nil
}

const unknownInt = -1 << 62

// through are the ops that carry a tensor's values on without mixing its
// tokens, which the walks back from an attention's scores go through.
var through = map[string]bool{
	"Div": true, "Mul": true, "Add": true, "Sub": true, "Cast": true, "Where": true,
	"Reshape": true, "Transpose": true, "Squeeze": true, "Unsqueeze": true, "Split": true,
	"Slice": true, "Identity": true, "Expand": true, "Contiguous": true,
}

// find searches back from value v, through the ops of through, for the
// nearest node that is a kind of op (nil at graph inputs, initializers
// and constants); path gets the through-nodes on the way to it.
func (g *graphIndex) find(v string, kind func(*onnxpb.Node) bool, depth int, path *[]*onnxpb.Node) *onnxpb.Node {
	n := g.producer[v]
	if n == nil || depth > 24 {
		return nil
	}
	if kind(n) {
		return n
	}
	if !through[n.OpType] {
		return nil
	}
	for _, in := range n.Input {
		if _, isInit := g.inits[in]; isInit {
			continue
		}
		if p := g.producer[in]; p == nil || p.OpType == "Constant" || p.OpType == "ConstantOfShape" {
			continue
		}
		mark := len(*path)
		*path = append(*path, n)
		if m := g.find(in, kind, depth+1, path); m != nil {
			return m
		}
		*path = (*path)[:mark]
	}
	return nil
}

// attention reads the attention layer whose scores sm normalizes: its
// heads, and whether its keys come from another input than its queries
// (cross-attention). ok is false when sm is not an attention's.
func (g *graphIndex) attention(sm *onnxpb.Node) (heads int64, cross, ok bool) {
	var path []*onnxpb.Node
	scores := func(n *onnxpb.Node) bool {
		return (n.OpType == "MatMul" || n.OpType == "FusedMatMul") && len(n.Input) == 2 && g.dims(n, 1) == nil
	}
	mm := g.find(sm.Input[0], scores, 0, &path)
	if mm == nil {
		return 0, false, false
	}
	projection := func(n *onnxpb.Node) bool {
		return (n.OpType == "MatMul" || n.OpType == "Gemm") && len(g.dims(n, 1)) == 2
	}
	path = path[:0]
	q := g.find(mm.Input[0], projection, 0, &path)
	var shapes [][]int64
	for _, n := range path {
		if n.OpType == "Reshape" && len(n.Input) > 1 {
			shapes = append(shapes, g.ints(n.Input[1], 0))
		}
	}
	var kpath []*onnxpb.Node
	k := g.find(mm.Input[1], projection, 0, &kpath)
	if q == nil || k == nil {
		return 0, false, false
	}
	width := int64(0)
	if w := g.dims(q, 1); len(w) == 2 {
		width = w[1]
		if q.OpType == "Gemm" && attrInt(q, "transB") == 1 {
			width = w[0]
		}
	}
	cross = q.Input[0] != k.Input[0]
	heads = 0
	// the split into heads, [batch, tokens, heads, head size]: the one
	// nearest the projection
	for i := len(shapes) - 1; i >= 0; i-- {
		s := shapes[i]
		if len(s) != 4 {
			continue
		}
		if s[2] > 0 && s[2] != unknownInt {
			heads = s[2]
		} else if s[3] > 0 && s[3] != unknownInt && width > 0 {
			heads = width / s[3]
		}
		break
	}
	if heads <= 0 {
		heads = max(1, width/64) // diffusers' usual head size
	}
	return heads, cross, true
}
