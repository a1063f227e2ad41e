package rewrite

import (
	"errors"
	"fmt"
	"slices"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Step caching (DeepCache, Ma et al. 2023): adjacent denoising steps
// change a UNet's deep features little, so a step can reuse the deep
// features of an earlier one and run only the shallow path: the first
// layers, the skip connection they feed, and the last up-blocks. The
// split is made on the graph: the UNet's up path joins each skip
// connection with the features from below in a Concat along channels;
// the deep input of the branch-th last such Concat is the cached value.
// The full model computes it as an extra output; the shallow model takes
// it as an extra input, and everything only it depended on is gone.

// FeatureInput is the name of the shallow model's extra input, and of the
// full model's extra output: the cached deep features.
const FeatureInput = "sdpipe_deep_features"

// SplitReport says what SplitDeep did.
type SplitReport struct {
	// Branch is the skip connection cut (1 = the last, shallowest one)
	// and Branches how many the graph has.
	Branch, Branches int
	// Cut is the graph value the feature replaces.
	Cut string
	// NodesFull and NodesShallow count the two graphs' nodes; WeightsFull
	// and WeightsShallow their initializers' elements.
	NodesFull, NodesShallow     int
	WeightsFull, WeightsShallow int64
}

// String summarises the report.
func (r SplitReport) String() string {
	return fmt.Sprintf("step cache: branch %d of %d, shallow path %d of %d nodes, %.1f%% of the weights",
		r.Branch, r.Branches, r.NodesShallow, r.NodesFull, 100*float64(r.WeightsShallow)/float64(max(r.WeightsFull, 1)))
}

// ErrNoSkips reports a graph without the skip-connection Concats SplitDeep
// cuts at (not a UNet, or one written otherwise).
var ErrNoSkips = errors.New("rewrite: no skip connection to cut for step caching")

// SplitDeep makes the two models of step caching from the UNet m: full,
// which is m with the deep features of skip connection branch (1 = the
// shallowest) as a second output named FeatureInput, and shallow, which
// takes them as an extra last input and computes m's outputs from them
// with only the nodes that still matter. m's nodes and tensors are shared
// by the results, not copied; m itself gets the extra output (full is m).
func SplitDeep(m *onnxpb.Model, branch int) (full, shallow *onnxpb.Model, rep SplitReport, err error) {
	if m == nil || m.Graph == nil {
		return nil, nil, rep, errors.New("rewrite: model has no graph")
	}
	if branch < 1 {
		return nil, nil, rep, fmt.Errorf("rewrite: step cache branch %d, want ≥ 1", branch)
	}
	g := m.Graph
	x := newGraph(g)
	sample := ""
	for _, v := range g.Input {
		if v.Name == "sample" || (sample == "" && len(v.Dims) == 4 && v.ElemType == onnxpb.Float) {
			sample = v.Name
		}
	}
	if sample == "" {
		return nil, nil, rep, fmt.Errorf("%w: no [batch, c, h, w] sample input", ErrNoSkips)
	}
	// values computed from the sample
	dep := map[string]bool{sample: true}
	for _, n := range g.Nodes { // topological order
		for _, in := range n.Input {
			if dep[in] {
				for _, o := range n.Output {
					dep[o] = true
				}
				break
			}
		}
	}
	var cats []*onnxpb.Node
	for _, n := range g.Nodes {
		if n.OpType == "Concat" && (n.Domain == "" || n.Domain == "ai.onnx") && len(n.Input) == 2 && len(n.Output) == 1 &&
			attrInt(n, "axis", 0) == 1 && dep[n.Input[0]] && dep[n.Input[1]] {
			cats = append(cats, n)
		}
	}
	rep.Branches, rep.Branch = len(cats), branch
	if len(cats) == 0 {
		return nil, nil, rep, ErrNoSkips
	}
	if branch > len(cats) {
		return nil, nil, rep, fmt.Errorf("rewrite: step cache branch %d, the graph has %d skip connections", branch, len(cats))
	}
	cat := cats[len(cats)-branch]
	outs := make([]string, len(g.Output))
	for i, v := range g.Output {
		outs[i] = v.Name
	}
	// the deep side is the input whose cut leaves the smaller graph
	var keep map[*onnxpb.Node]bool
	for _, c := range cat.Input {
		k := x.needed(outs, c)
		if keep == nil || len(k) < len(keep) {
			keep, rep.Cut = k, c
		}
	}
	for _, v := range outs {
		if v == rep.Cut {
			return nil, nil, rep, fmt.Errorf("rewrite: step cache: the cut %q is a graph output", v)
		}
	}

	sg := &onnxpb.Graph{Name: g.Name + "_shallow", Input: slices.Clone(g.Input), Output: slices.Clone(g.Output)}
	feature := onnxpb.ValueInfo{Name: FeatureInput, ElemType: onnxpb.Float, Dims: []onnxpb.Dim{{Param: "batch"}, {}, {}, {}}}
	sg.Input = append(sg.Input, feature)
	used := map[string]bool{}
	for _, n := range g.Nodes {
		if !keep[n] {
			continue
		}
		c := *n
		c.Input = slices.Clone(n.Input)
		for i, in := range c.Input {
			if in == rep.Cut {
				c.Input[i] = FeatureInput
			}
			used[c.Input[i]] = true
		}
		sg.Nodes = append(sg.Nodes, &c)
	}
	for _, t := range g.Initializer {
		rep.WeightsFull += t.NumElements()
		if used[t.Name] {
			sg.Initializer = append(sg.Initializer, t)
			rep.WeightsShallow += t.NumElements()
		}
	}
	for _, v := range g.ValueInfo {
		if used[v.Name] && v.Name != rep.Cut {
			sg.ValueInfo = append(sg.ValueInfo, v)
		}
	}
	rep.NodesFull, rep.NodesShallow = len(g.Nodes), len(sg.Nodes)
	shallow = &onnxpb.Model{IRVersion: m.IRVersion, OpsetImports: slices.Clone(m.OpsetImports), ProducerName: m.ProducerName,
		Graph: sg, MetadataProps: slices.Clone(m.MetadataProps)}

	// the full model: an Identity gives the cut value the feature's name
	g.Nodes = append(g.Nodes, &onnxpb.Node{Name: x.fresh("sdpipe_feature_out"), OpType: "Identity", Input: []string{rep.Cut}, Output: []string{FeatureInput}})
	g.Output = append(g.Output, feature)
	return m, shallow, rep, nil
}

// needed returns the nodes that the values outs depend on when value cut
// is given (an input).
func (x *graph) needed(outs []string, cut string) map[*onnxpb.Node]bool {
	keep := map[*onnxpb.Node]bool{}
	work := slices.Clone(outs)
	seen := map[string]bool{}
	for len(work) > 0 {
		v := work[len(work)-1]
		work = work[:len(work)-1]
		if seen[v] || v == cut || v == "" {
			continue
		}
		seen[v] = true
		n := x.producer[v]
		if n == nil || keep[n] {
			continue
		}
		keep[n] = true
		work = append(work, n.Input...)
	}
	return keep
}
