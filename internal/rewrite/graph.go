package rewrite

import (
	"encoding/binary"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// graph indexes a graph's nodes by the values they produce and consume.
type graph struct {
	g         *onnxpb.Graph
	producer  map[string]*onnxpb.Node
	consumers map[string][]*onnxpb.Node
	inits     map[string]*onnxpb.Tensor
	outputs   map[string]bool // graph outputs
	removed   map[*onnxpb.Node]bool
	names     map[string]bool // every value and node name, for fresh names
}

func newGraph(g *onnxpb.Graph) *graph {
	x := &graph{
		g:         g,
		producer:  make(map[string]*onnxpb.Node),
		consumers: make(map[string][]*onnxpb.Node),
		inits:     make(map[string]*onnxpb.Tensor),
		outputs:   make(map[string]bool),
		removed:   make(map[*onnxpb.Node]bool),
		names:     make(map[string]bool),
	}
	for _, t := range g.Initializer {
		x.inits[t.Name] = t
		x.names[t.Name] = true
	}
	for _, v := range g.Input {
		x.names[v.Name] = true
	}
	for _, v := range g.Output {
		x.outputs[v.Name] = true
	}
	for _, n := range g.Nodes {
		x.names[n.Name] = true
		for _, o := range n.Output {
			x.producer[o] = n
			x.names[o] = true
		}
		for _, in := range n.Input {
			if in != "" {
				x.consumers[in] = append(x.consumers[in], n)
			}
		}
	}
	return x
}

// op returns the node producing value v if it is a default-domain op of
// the given type, else nil.
func (x *graph) op(v, opType string) *onnxpb.Node {
	n := x.producer[v]
	if n == nil || x.removed[n] || n.OpType != opType || (n.Domain != "" && n.Domain != "ai.onnx") {
		return nil
	}
	return n
}

// live returns the consumers of v that are not removed.
func (x *graph) live(v string) []*onnxpb.Node {
	var l []*onnxpb.Node
	for _, n := range x.consumers[v] {
		if !x.removed[n] {
			l = append(l, n)
		}
	}
	return l
}

// used reports whether v is consumed by a live node or is a graph output.
func (x *graph) used(v string) bool {
	return x.outputs[v] || len(x.live(v)) > 0
}

// constant returns the tensor behind v when v is an initializer or the
// output of a Constant node with a tensor value.
func (x *graph) constant(v string) *onnxpb.Tensor {
	if t, ok := x.inits[v]; ok {
		return t
	}
	n := x.op(v, "Constant")
	if n == nil {
		return nil
	}
	for _, a := range n.Attribute {
		switch {
		case a.Name == "value" && a.T != nil:
			return a.T
		case a.Name == "value_float":
			b := binary.LittleEndian.AppendUint32(nil, math.Float32bits(a.F))
			return &onnxpb.Tensor{DataType: onnxpb.Float, RawData: b}
		}
	}
	return nil
}

// floats returns the elements of an in-graph float tensor (float32, float16
// or float64) as float64, or nil when t is not such a tensor or its data is
// external.
func floats(t *onnxpb.Tensor) []float64 {
	if t == nil || t.DataLocation == onnxpb.LocationExternal {
		return nil
	}
	n := int(t.NumElements())
	out := make([]float64, 0, n)
	switch t.DataType {
	case onnxpb.Float:
		if len(t.FloatData) == n {
			for _, f := range t.FloatData {
				out = append(out, float64(f))
			}
			return out
		}
		if len(t.RawData) != 4*n {
			return nil
		}
		for i := range n {
			out = append(out, float64(math.Float32frombits(binary.LittleEndian.Uint32(t.RawData[4*i:]))))
		}
	case onnxpb.Double:
		if len(t.RawData) != 8*n {
			return nil
		}
		for i := range n {
			out = append(out, math.Float64frombits(binary.LittleEndian.Uint64(t.RawData[8*i:])))
		}
	case onnxpb.Float16:
		// float16 values may also sit in int32_data, one per element
		switch {
		case len(t.RawData) == 2*n:
			for i := range n {
				out = append(out, half(binary.LittleEndian.Uint16(t.RawData[2*i:])))
			}
		case len(t.Int32Data) == n:
			for _, v := range t.Int32Data {
				out = append(out, half(uint16(v)))
			}
		default:
			return nil
		}
	default:
		return nil
	}
	return out
}

// half converts IEEE 754 binary16 bits to float64.
func half(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp := int(h>>10) & 0x1f
	frac := float64(h & 0x3ff)
	switch exp {
	case 0:
		return sign * frac * math.Pow(2, -24)
	case 0x1f:
		if frac == 0 {
			return math.Inf(int(sign))
		}
		return math.NaN()
	}
	return sign * (1 + frac/1024) * math.Pow(2, float64(exp-15))
}

// scalar returns the value of v when v is a constant float tensor of one
// element.
func (x *graph) scalar(v string) (float64, bool) {
	f := floats(x.constant(v))
	if len(f) != 1 {
		return 0, false
	}
	return f[0], true
}

// other returns the input of the binary node n that is not v, or "" when
// n's inputs are not v and one other value.
func other(n *onnxpb.Node, v string) string {
	if len(n.Input) != 2 {
		return ""
	}
	switch v {
	case n.Input[0]:
		return n.Input[1]
	case n.Input[1]:
		return n.Input[0]
	}
	return ""
}

// replaceUses makes every live consumer of old read new instead.
func (x *graph) replaceUses(old, new string) {
	for _, n := range x.live(old) {
		for i, in := range n.Input {
			if in == old {
				n.Input[i] = new
			}
		}
		x.consumers[new] = append(x.consumers[new], n)
	}
}

// remove marks n removed, then removes every producer that thereby lost
// its last use (dead code left behind by the rewrite).
func (x *graph) remove(n *onnxpb.Node) {
	work := []*onnxpb.Node{n}
	for len(work) > 0 {
		n := work[len(work)-1]
		work = work[:len(work)-1]
		if x.removed[n] {
			continue
		}
		x.removed[n] = true
		for _, in := range n.Input {
			p := x.producer[in]
			if p == nil || x.removed[p] {
				continue
			}
			dead := true
			for _, o := range p.Output {
				if x.used(o) {
					dead = false
					break
				}
			}
			if dead {
				work = append(work, p)
			}
		}
	}
}

// fresh returns a name not used in the graph, based on base.
func (x *graph) fresh(base string) string {
	name := base
	for i := 1; x.names[name]; i++ {
		name = base + "_" + itoa(i)
	}
	x.names[name] = true
	return name
}

func itoa(i int) string {
	var b [20]byte
	p := len(b)
	for {
		p--
		b[p] = byte('0' + i%10)
		i /= 10
		if i == 0 {
			return string(b[p:])
		}
	}
}

// insertBefore queues node n to be placed right before node at in the
// node list (kept topologically sorted) when the graph is compacted.
func (x *graph) add(n *onnxpb.Node) {
	x.g.Nodes = append(x.g.Nodes, n)
	for _, o := range n.Output {
		x.producer[o] = n
	}
	for _, in := range n.Input {
		if in != "" {
			x.consumers[in] = append(x.consumers[in], n)
		}
	}
}

// compact drops removed nodes and sorts the rest topologically (ONNX
// requires producers before consumers), keeping the original order where
// possible.
func (x *graph) compact() {
	var live []*onnxpb.Node
	for _, n := range x.g.Nodes {
		if !x.removed[n] {
			live = append(live, n)
		}
	}
	placed := make(map[*onnxpb.Node]bool, len(live))
	out := make([]*onnxpb.Node, 0, len(live))
	var visit func(n *onnxpb.Node)
	visit = func(n *onnxpb.Node) {
		if placed[n] {
			return
		}
		placed[n] = true
		for _, in := range n.Input {
			if p := x.producer[in]; p != nil && !x.removed[p] {
				visit(p)
			}
		}
		out = append(out, n)
	}
	for _, n := range live {
		visit(n)
	}
	x.g.Nodes = out
}
