package rewrite

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Rewrite names one graph rewrite.
type Rewrite string

// The rewrites Apply knows.
const (
	// Baddbmm removes the zero-beta baddbmm artefact of the diffusers ONNX
	// converter on torch below 2.0: Add(MatMul(q, kᵀ)·scale, ConstantOfShape
	// zeros · 0), which materialises the [batch·heads, n, m] score tensor
	// three more times, becomes MatMul(q, kᵀ)·scale.
	Baddbmm Rewrite = "baddbmm"
	// FoldScale moves the scale of Mul(MatMul(a, b), c), c a constant
	// scalar, onto the MatMul's second operand: MatMul(a, b·c), scaling the
	// keys once instead of the whole score tensor. Where b is a transpose,
	// the scale is applied before it.
	FoldScale Rewrite = "fold-scale"
	// MHA fuses each attention written as MatMul → Softmax → MatMul over
	// split heads (after Baddbmm, for the converter's form) into ONNX
	// Runtime's com.microsoft.MultiHeadAttention, which the CPU provider
	// runs without the head-splitting transposes. Only ONNX Runtime can run
	// the result.
	MHA Rewrite = "mha"
)

// Known lists every Rewrite, in the order Apply runs them.
var Known = []Rewrite{Baddbmm, FoldScale, MHA}

// ErrUnknown reports a Rewrite name Apply does not know.
var ErrUnknown = errors.New("rewrite: unknown rewrite")

// Parse converts names such as "baddbmm,fold-scale" to rewrites; the empty
// string gives none.
func Parse(s string) ([]Rewrite, error) {
	var rs []Rewrite
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if !slices.Contains(Known, Rewrite(f)) {
			return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, f, key(Known))
		}
		rs = append(rs, Rewrite(f))
	}
	return rs, nil
}

// key returns the canonical, sorted, comma-separated form of rs.
func key(rs []Rewrite) string {
	s := make([]string, 0, len(rs))
	for _, r := range rs {
		s = append(s, string(r))
	}
	slices.Sort(s)
	return strings.Join(slices.Compact(s), ",")
}

// Report says what Apply did.
type Report struct {
	// Sites counts the places each rewrite changed.
	Sites map[Rewrite]int
	// Refused lists places that looked like a rewrite's pattern but did
	// not match it exactly, with the reason; they were left unchanged.
	Refused []string
	// NodesBefore and NodesAfter count the graph's nodes.
	NodesBefore, NodesAfter int
}

// Changed reports whether any rewrite changed the graph.
func (r Report) Changed() bool {
	for _, n := range r.Sites {
		if n > 0 {
			return true
		}
	}
	return false
}

// String summarises the report, e.g. "baddbmm×16 (3195→2891 nodes)".
func (r Report) String() string {
	var parts []string
	for _, k := range Known {
		if n := r.Sites[k]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s×%d", k, n))
		}
	}
	if len(parts) == 0 {
		parts = append(parts, "no change")
	}
	return fmt.Sprintf("%s (%d→%d nodes)", strings.Join(parts, " "), r.NodesBefore, r.NodesAfter)
}

// Apply runs the rewrites rs on m's main graph, in place, in the order of
// Known. An unknown name is an error and leaves m unchanged. Apply only
// changes the graph where a pattern matches exactly; the model's weights,
// inputs and outputs are kept.
func Apply(m *onnxpb.Model, rs ...Rewrite) (Report, error) {
	if m == nil || m.Graph == nil {
		return Report{}, errors.New("rewrite: model has no graph")
	}
	for _, r := range rs {
		if !slices.Contains(Known, r) {
			return Report{}, fmt.Errorf("%w %q (known: %s)", ErrUnknown, r, key(Known))
		}
	}
	rep := Report{Sites: make(map[Rewrite]int), NodesBefore: len(m.Graph.Nodes)}
	for _, r := range Known {
		if !slices.Contains(rs, r) {
			continue
		}
		x := newGraph(m.Graph)
		switch r {
		case Baddbmm:
			removeBaddbmm(x, &rep)
		case FoldScale:
			foldScale(x, &rep)
		case MHA:
			fuseMHA(x, &rep)
			if rep.Sites[MHA] > 0 && !slices.ContainsFunc(m.OpsetImports, func(o onnxpb.OperatorSet) bool { return o.Domain == msDomain }) {
				m.OpsetImports = append(m.OpsetImports, onnxpb.OperatorSet{Domain: msDomain, Version: 1})
			}
		}
		x.compact()
	}
	rep.NodesAfter = len(m.Graph.Nodes)
	return rep, nil
}
