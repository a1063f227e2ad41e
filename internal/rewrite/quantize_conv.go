package rewrite

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

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
		z.addDerived(bias, bn, []int64{m}, onnxpb.Int32, func(dst []byte, b []float32) {
			for c, v := range b {
				q := math.Round(float64(v) / (float64(xs) * float64(scale[c])))
				q = max(math.MinInt32, min(math.MaxInt32, q))
				binary.LittleEndian.PutUint32(dst[4*c:], uint32(int32(q)))
			}
		})
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
		z.addDerived(bias, bn, []int64{1, m, 1, 1}, onnxpb.Float, func(dst []byte, b []float32) {
			for c, v := range b {
				binary.LittleEndian.PutUint32(dst[4*c:], math.Float32bits(v))
			}
		})
		z.x.add(&onnxpb.Node{Name: z.x.fresh(n.Name + "_bias"), OpType: "Add", Input: []string{out, bn}, Output: []string{y}})
	}
	z.q.Report.ConvDyn++
}
