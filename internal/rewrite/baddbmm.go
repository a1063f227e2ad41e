package rewrite

import (
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// zeroTerm reports whether value z is ConstantOfShape(shape, finite c) · 0
// and returns the ConstantOfShape node; why says what did not match when
// z's producer looks like the artefact but is not it.
func (x *graph) zeroTerm(z string) (cos *onnxpb.Node, why string) {
	mul := x.op(z, "Mul")
	if mul == nil || len(mul.Input) != 2 {
		return nil, ""
	}
	for _, e := range mul.Input {
		c := x.op(e, "ConstantOfShape")
		if c == nil {
			continue
		}
		zero, ok := x.scalar(other(mul, e))
		if !ok {
			return nil, "ConstantOfShape is multiplied by a non-constant"
		}
		if zero != 0 {
			return nil, fmt.Sprintf("ConstantOfShape is multiplied by %g, not 0", zero)
		}
		fill := 0.0
		for _, a := range c.Attribute {
			if a.Name == "value" && a.T != nil {
				f := floats(a.T)
				if len(f) != 1 {
					return nil, "ConstantOfShape value is not one float"
				}
				fill = f[0]
			}
		}
		if math.IsInf(fill, 0) || math.IsNaN(fill) {
			return nil, fmt.Sprintf("ConstantOfShape fills %g (times 0 is NaN)", fill)
		}
		if len(c.Input) != 1 || x.op(c.Input[0], "Concat") == nil {
			return nil, "ConstantOfShape shape is not computed from the operands' shapes"
		}
		return c, ""
	}
	return nil, ""
}

// scores reports whether value a is MatMul(…) or MatMul(…)·c with c a
// constant scalar: the scaled attention scores of a baddbmm.
func (x *graph) scores(a string) bool {
	if x.op(a, "MatMul") != nil {
		return true
	}
	mul := x.op(a, "Mul")
	if mul == nil || len(mul.Input) != 2 {
		return false
	}
	for _, s := range mul.Input {
		if x.op(s, "MatMul") != nil {
			if _, ok := x.scalar(other(mul, s)); ok {
				return true
			}
		}
	}
	return false
}

// removeBaddbmm replaces Add(scores, ConstantOfShape·0) by scores.
func removeBaddbmm(x *graph, rep *Report) {
	for _, n := range x.g.Nodes {
		if x.removed[n] || n.OpType != "Add" || (n.Domain != "" && n.Domain != "ai.onnx") || len(n.Input) != 2 || len(n.Output) != 1 {
			continue
		}
		for i, z := range n.Input {
			cos, why := x.zeroTerm(z)
			if cos == nil {
				if why != "" {
					rep.Refused = append(rep.Refused, fmt.Sprintf("%s: %s at node %q: %s", Baddbmm, "zero term", n.Name, why))
				}
				continue
			}
			a := n.Input[1-i]
			switch {
			case !x.scores(a):
				rep.Refused = append(rep.Refused, fmt.Sprintf("%s: node %q adds zeros to something other than MatMul scores", Baddbmm, n.Name))
			case x.outputs[n.Output[0]]:
				rep.Refused = append(rep.Refused, fmt.Sprintf("%s: node %q produces a graph output", Baddbmm, n.Name))
			default:
				x.replaceUses(n.Output[0], a)
				x.remove(n)
				rep.Sites[Baddbmm]++
			}
			break
		}
	}
}

// foldScale rewrites Mul(MatMul(a, b), c) to MatMul(a, b·c).
func foldScale(x *graph, rep *Report) {
	for _, n := range x.g.Nodes {
		if x.removed[n] || n.OpType != "Mul" || (n.Domain != "" && n.Domain != "ai.onnx") || len(n.Input) != 2 || len(n.Output) != 1 {
			continue
		}
		for _, s := range n.Input {
			mm := x.op(s, "MatMul")
			if mm == nil || len(mm.Input) != 2 {
				continue
			}
			c := other(n, s)
			if _, ok := x.scalar(c); !ok {
				continue
			}
			if len(x.live(s)) != 1 || x.outputs[s] {
				rep.Refused = append(rep.Refused, fmt.Sprintf("%s: MatMul %q has other consumers", FoldScale, mm.Name))
				break
			}
			if x.outputs[n.Output[0]] {
				rep.Refused = append(rep.Refused, fmt.Sprintf("%s: node %q produces a graph output", FoldScale, n.Name))
				break
			}
			// scale the second operand, before its transpose when it has
			// one of its own, so that ONNX Runtime can still fuse the
			// transpose into the MatMul
			target, slot := mm, 1
			if tr := x.op(mm.Input[1], "Transpose"); tr != nil && len(x.live(mm.Input[1])) == 1 && !x.outputs[mm.Input[1]] {
				target, slot = tr, 0
			}
			in := target.Input[slot]
			scaled := x.fresh(in + "_scaled")
			x.add(&onnxpb.Node{
				Name:   x.fresh(n.Name + "_folded"),
				OpType: "Mul",
				Input:  []string{in, c},
				Output: []string{scaled},
			})
			target.Input[slot] = scaled
			x.consumers[scaled] = append(x.consumers[scaled], target)
			x.replaceUses(n.Output[0], s)
			x.remove(n)
			rep.Sites[FoldScale]++
			break
		}
	}
}
