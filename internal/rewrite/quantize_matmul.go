package rewrite

import (
	"fmt"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

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
	k, nn, ok := z.matDims(n, w, trans)
	if !ok {
		return nil
	}
	if z.x.constant(n.Input[0]) != nil {
		return nil // constant × constant: left to ORT's folding
	}
	z.q.Report.MatMul++
	return z.dynamicMatMul(n.Name, n.Input[0], w, k, nn, trans, "", n)
}

// matDims returns the reduction k and the output width nn of the MatMul or
// Gemm n of weight w ([k, nn], or [nn, k] transposed), and whether k is
// large enough to quantize; when it is not, n is kept in float32.
func (z *quantizer) matDims(n *onnxpb.Node, w *onnxpb.Tensor, trans bool) (k, nn int64, ok bool) {
	k, nn = w.Dims[0], w.Dims[1]
	if trans {
		k, nn = nn, k
	}
	if k < int64(z.o.minReduction()) {
		z.keep(n, fmt.Sprintf("reduction %d < %d", k, z.o.minReduction()))
		return k, nn, false
	}
	return k, nn, true
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
	k, nn, ok := z.matDims(n, w, trans)
	if !ok {
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
