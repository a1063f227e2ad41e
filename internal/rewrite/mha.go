package rewrite

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// msDomain is ONNX Runtime's contrib operator domain.
const msDomain = "com.microsoft"

// skipCast follows float-to-float Cast nodes (to = FLOAT), which the
// converter wraps around the softmax, back to their input.
func (x *graph) skipCast(v string) string {
	for {
		c := x.op(v, "Cast")
		if c == nil || len(c.Input) != 1 {
			return v
		}
		to := int64(-1)
		for _, a := range c.Attribute {
			if a.Name == "to" {
				to = a.I
			}
		}
		if to != int64(onnxpb.Float) {
			return v
		}
		v = c.Input[0]
	}
}

func perm(n *onnxpb.Node) []int64 {
	for _, a := range n.Attribute {
		if a.Name == "perm" {
			return a.Ints
		}
	}
	return nil
}

// ints returns the elements of a constant int64 tensor, or nil.
func ints(t *onnxpb.Tensor) []int64 {
	if t == nil || t.DataType != onnxpb.Int64 || t.DataLocation == onnxpb.LocationExternal {
		return nil
	}
	n := int(t.NumElements())
	if len(t.Int64Data) == n {
		return t.Int64Data
	}
	if len(t.RawData) != 8*n {
		return nil
	}
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(binary.LittleEndian.Uint64(t.RawData[8*i:]))
	}
	return out
}

// headCount returns H when shape (a Reshape's shape input) is a
// four-element shape [b, n, H, d] with H constant: a constant tensor, or a
// Concat of four one-element parts whose third is constant.
func (x *graph) headCount(shape string) (int64, bool) {
	if c := ints(x.constant(shape)); len(c) == 4 && c[2] > 0 {
		return c[2], true
	}
	cat := x.op(shape, "Concat")
	if cat == nil || len(cat.Input) != 4 {
		return 0, false
	}
	if h := ints(x.constant(cat.Input[2])); len(h) == 1 && h[0] > 0 {
		return h[0], true
	}
	return 0, false
}

// heads recognises v as the heads of a [b, n, H·d] tensor src: in 4-D,
// Transpose(Reshape(src, [b, n, H, d]), p4), or in 3-D (heads folded into
// the batch), Reshape(Transpose(Reshape(src, [b, n, H, d]), [0, 2, 1, 3]),
// [b·H, n, d]) transposed by p3 when p3 is not nil.
func (x *graph) heads(v string, p4, p3 []int64) (src string, h int64, ok bool) {
	if tr := x.op(v, "Transpose"); tr != nil && len(tr.Input) == 1 {
		if slices.Equal(perm(tr), p4) {
			if r := x.op(tr.Input[0], "Reshape"); r != nil && len(r.Input) == 2 {
				if h, ok := x.headCount(r.Input[1]); ok {
					return r.Input[0], h, true
				}
			}
			return "", 0, false
		}
		if p3 == nil || !slices.Equal(perm(tr), p3) {
			return "", 0, false
		}
		v = tr.Input[0]
	} else if p3 != nil {
		return "", 0, false
	}
	// 3-D: Reshape(Transpose(Reshape(src, ·), 0,2,1,3), ·)
	r3 := x.op(v, "Reshape")
	if r3 == nil || len(r3.Input) != 2 {
		return "", 0, false
	}
	tr := x.op(r3.Input[0], "Transpose")
	if tr == nil || len(tr.Input) != 1 || !slices.Equal(perm(tr), []int64{0, 2, 1, 3}) {
		return "", 0, false
	}
	r4 := x.op(tr.Input[0], "Reshape")
	if r4 == nil || len(r4.Input) != 2 {
		return "", 0, false
	}
	h, ok = x.headCount(r4.Input[1])
	return r4.Input[0], h, ok
}

// unscale returns v's input and the scale when v is Mul(·, constant
// scalar); else v and 1.
func (x *graph) unscale(v string) (string, float64, bool) {
	m := x.op(v, "Mul")
	if m == nil || len(m.Input) != 2 {
		return v, 1, false
	}
	for _, in := range m.Input {
		if c, ok := x.scalar(other(m, in)); ok && in != other(m, in) {
			return in, c, true
		}
	}
	return v, 1, false
}

// fuseMHA replaces each attention written as MatMul → Softmax → MatMul
// over split heads by com.microsoft.MultiHeadAttention on the unsplit
// projections.
func fuseMHA(x *graph, rep *Report) {
	for _, sm := range x.g.Nodes {
		if x.removed[sm] || sm.OpType != "Softmax" || (sm.Domain != "" && sm.Domain != "ai.onnx") || len(sm.Input) != 1 {
			continue
		}
		refuse := func(format string, args ...any) {
			rep.Refused = append(rep.Refused, fmt.Sprintf("%s: softmax %q: %s", MHA, sm.Name, fmt.Sprintf(format, args...)))
		}
		axis := int64(-1)
		for _, a := range sm.Attribute {
			if a.Name == "axis" {
				axis = a.I
			}
		}
		// scores: [Mul(]MatMul(q[·c], kᵀ[·c])[, c)], through casts
		s := x.skipCast(sm.Input[0])
		scale := 1.0
		s, c, _ := x.unscale(s)
		scale *= c
		mm := x.op(s, "MatMul")
		if mm == nil || len(mm.Input) != 2 {
			continue // not attention (or a masked one): nothing to say
		}
		qv, c, _ := x.unscale(mm.Input[0])
		scale *= c
		kv, c, _ := x.unscale(mm.Input[1])
		scale *= c
		q, hq, ok1 := x.heads(qv, []int64{0, 2, 1, 3}, nil)
		k, hk, ok2 := x.heads(kv, []int64{0, 2, 3, 1}, []int64{0, 2, 1})
		if !ok1 || !ok2 || hq != hk {
			refuse("queries or keys are not split heads of one count")
			continue
		}
		// probabilities × values
		pv := x.live(sm.Output[0])
		for len(pv) == 1 && pv[0].OpType == "Cast" && x.skipCast(pv[0].Output[0]) == sm.Output[0] {
			pv = x.live(pv[0].Output[0])
		}
		if len(pv) != 1 || pv[0].OpType != "MatMul" || len(pv[0].Input) != 2 || x.skipCast(pv[0].Input[0]) != sm.Output[0] {
			refuse("the probabilities do not feed one MatMul")
			continue
		}
		v, hv, ok := x.heads(pv[0].Input[1], []int64{0, 2, 1, 3}, nil)
		if !ok || hv != hq {
			refuse("values are not split heads")
			continue
		}
		// merge heads: 4-D Reshape(Transpose(o, 0,2,1,3)), or 3-D
		// Reshape(Transpose(Reshape(o), 0,2,1,3))
		o := pv[0].Output[0]
		next := func(v, op string) *onnxpb.Node {
			for _, n := range x.live(v) {
				if n.OpType == op && len(n.Input) >= 1 && n.Input[0] == v {
					return n
				}
			}
			return nil
		}
		rank := int64(4)
		if r := next(o, "Reshape"); r != nil { // heads folded into the batch
			o, rank = r.Output[0], 3
		}
		if axis != -1 && axis != rank-1 {
			refuse("softmax over axis %d of a rank-%d tensor", axis, rank)
			continue
		}
		tr := next(o, "Transpose")
		if tr == nil || !slices.Equal(perm(tr), []int64{0, 2, 1, 3}) {
			refuse("heads are not merged by a transpose")
			continue
		}
		final := next(tr.Output[0], "Reshape")
		if final == nil || len(x.live(tr.Output[0])) != 1 {
			refuse("heads are not merged by a reshape")
			continue
		}
		if x.outputs[final.Output[0]] {
			refuse("the attention output is a graph output")
			continue
		}
		out := x.fresh(final.Output[0] + "_mha")
		x.add(&onnxpb.Node{
			Name:   x.fresh(sm.Name + "_mha"),
			OpType: "MultiHeadAttention",
			Domain: msDomain,
			Input:  []string{q, k, v},
			Output: []string{out},
			Attribute: []*onnxpb.Attribute{
				{Name: "num_heads", Type: onnxpb.AttrInt, I: hq},
				{Name: "scale", Type: onnxpb.AttrFloat, F: float32(scale)},
			},
		})
		x.replaceUses(final.Output[0], out)
		x.remove(final)
		rep.Sites[MHA]++
	}
}
