package ckpt

import (
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Branch is one module's low-rank LoRA branch in a built graph: the
// module's output y becomes y + lora(x), fed per call through two graph
// inputs, so that LoRAs change between calls, and between the rows of one
// batch, without rebuilding the session.
//
// For a Linear module (x [batch, …, In]):
//
//	lora(x) = reshape(x·Down → [batch, -1, R]) · Up[batch]
//
// with Down [In, R] shared by the batch and Up [batch, R, Out] per row.
// For a Conv module (x [batch, In, h, w]), with the module's stride and
// padding:
//
//	lora(x) = Up[batch] · reshape(conv(x, Down) → [batch, R, h'·w'])
//
// with Down [R, In, k, k] and Up [batch, Out, R]. R is the total rank of
// the LoRAs a call applies (at least 1: all-zero inputs apply none); each
// LoRA's Down rows are shared and its scaled up·multiplier is placed, per
// row, in its own rank slots of Up (zeros in the rows that do not use it).
type Branch struct {
	Component Component
	Module    string // diffusers module path
	Kind      modelgen.ModuleKind
	In, Out   int
	Kernel    int
	Down, Up  string // graph input names
}

// Branches records the branches a hook added, keyed by component and
// module. It is safe for concurrent use.
type Branches struct {
	mu   sync.Mutex
	list map[Component]map[string]Branch
}

// Lookup returns the branch of module in component c.
func (bs *Branches) Lookup(c Component, module string) (Branch, bool) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.list[c][module]
	return b, ok
}

// Of returns the branches of component c (a copy).
func (bs *Branches) Of(c Component) []Branch {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	out := make([]Branch, 0, len(bs.list[c]))
	for _, b := range bs.list[c] {
		out = append(out, b)
	}
	return out
}

// BranchHook returns a module hook that adds a LoRA branch (see Branch)
// after every Linear and Conv module of the UNet and text encoders, and
// records them in bs. Convs with asymmetric padding are left alone.
func BranchHook(bs *Branches) modelgen.ModuleHook {
	return func(b *modelgen.Builder, m modelgen.Module, x, y string) (string, error) {
		c := Component(m.Component)
		if c != UNet && c != TextEncoder && c != TextEncoder2 {
			return y, nil
		}
		if m.Kind == modelgen.Conv && m.Pad < 0 {
			return y, nil
		}
		br := Branch{Component: c, Module: m.Name, Kind: m.Kind, In: m.In, Out: m.Out, Kernel: max(m.Kernel, 1),
			Down: "lora." + m.Name + ".down", Up: "lora." + m.Name + ".up"}
		rank := "rank." + m.Name
		ft := b.Float()
		var out string
		switch m.Kind {
		case modelgen.Linear:
			d := b.Input(br.Down, ft, m.In, rank)
			u := b.Input(br.Up, ft, "batch", rank, m.Out)
			h := b.Op("MatMul", []string{x, d})
			r := b.Op("Shape", []string{d}, modelgen.AttrInt("start", 1), modelgen.AttrInt("end", 2))
			h3 := b.Op("Reshape", []string{h, b.Op("Concat", []string{b.Ints(0, -1), r}, modelgen.AttrInt("axis", 0))})
			out = b.Op("MatMul", []string{h3, u})
		case modelgen.Conv:
			k := int64(br.Kernel)
			d := b.Input(br.Down, ft, rank, m.In, br.Kernel, br.Kernel)
			u := b.Input(br.Up, ft, "batch", m.Out, rank)
			p := int64(m.Pad)
			mid := b.Op("Conv", []string{x, d},
				modelgen.AttrInts("kernel_shape", k, k),
				modelgen.AttrInts("strides", int64(m.Stride), int64(m.Stride)),
				modelgen.AttrInts("pads", p, p, p, p))
			mid3 := b.Op("Reshape", []string{mid, b.Ints(0, 0, -1)})
			out = b.Op("MatMul", []string{u, mid3})
		default:
			return "", fmt.Errorf("ckpt: module kind %v has no LoRA branch", m.Kind)
		}
		out = b.Op("Reshape", []string{out, b.Op("Shape", []string{y})})
		bs.mu.Lock()
		if bs.list == nil {
			bs.list = map[Component]map[string]Branch{}
		}
		if bs.list[c] == nil {
			bs.list[c] = map[string]Branch{}
		}
		bs.list[c][m.Name] = br
		bs.mu.Unlock()
		return b.Op("Add", []string{y, out}), nil
	}
}

// BranchesFromInputs recovers the branches of a built graph from its
// input names and shapes (name → shape, -1 for dynamic dimensions), so
// that a graph read back from the cache needs no rebuild.
func BranchesFromInputs(c Component, inputs map[string][]int64) (*Branches, error) {
	bs := &Branches{list: map[Component]map[string]Branch{c: {}}}
	for name, shape := range inputs {
		mod, ok := strings.CutPrefix(name, "lora.")
		if !ok {
			continue
		}
		mod, ok = strings.CutSuffix(mod, ".down")
		if !ok {
			continue
		}
		up, ok := inputs["lora."+mod+".up"]
		if !ok || len(up) != 3 {
			return nil, fmt.Errorf("ckpt: LoRA branch %s has no up input", mod)
		}
		br := Branch{Component: c, Module: mod, Down: name, Up: "lora." + mod + ".up", Kernel: 1}
		switch len(shape) {
		case 2:
			br.Kind, br.In, br.Out = modelgen.Linear, int(shape[0]), int(up[2])
		case 4:
			br.Kind, br.In, br.Out, br.Kernel = modelgen.Conv, int(shape[1]), int(up[1]), int(shape[2])
		default:
			return nil, fmt.Errorf("ckpt: LoRA branch %s: down input of shape %v", mod, shape)
		}
		if br.In <= 0 || br.Out <= 0 || br.Kernel <= 0 {
			return nil, fmt.Errorf("ckpt: LoRA branch %s: shapes %v and %v are not static", mod, shape, up)
		}
		bs.list[c][mod] = br
	}
	return bs, nil
}

// BranchTensor is one graph input of the LoRA branches: its shape and
// float32 values.
type BranchTensor struct {
	Shape []int64
	Data  []float32
}

// BranchInputs returns the branch inputs of component c for a batch whose
// row i applies rows[i] (nil or empty: no LoRA). Every branch of the
// component gets its two inputs. A LoRA module that fits no branch, or
// whose shape differs from its branch's, is an error naming it. LoRA
// modules of other components are ignored.
func BranchInputs(bs *Branches, c Component, rows [][]Applied) (map[string]BranchTensor, error) {
	type slot struct {
		lora   *LoRA
		m      *LoRAModule
		offset int
	}
	batch := len(rows)
	// Distinct modules per branch, in first-seen order, with their rank
	// offsets.
	slots := map[string][]slot{}
	rank := map[string]int{}
	branches := bs.Of(c)
	byModule := map[string]Branch{}
	for _, b := range branches {
		byModule[b.Module] = b
	}
	for _, row := range rows {
		for _, a := range row {
			for i := range a.LoRA.Modules {
				m := &a.LoRA.Modules[i]
				if m.Target.Component != c {
					continue
				}
				b, ok := byModule[m.Target.Module]
				if !ok {
					return nil, fmt.Errorf("ckpt: LoRA %s: %s has no branch in the %s graph", a.LoRA.Name, m.Name, c)
				}
				if m.Target.Shape[0] != int64(b.Out) || len(m.Down)/m.Rank != b.In*b.Kernel*b.Kernel {
					return nil, fmt.Errorf("ckpt: LoRA %s: %s does not fit branch %s (%d→%d, kernel %d)", a.LoRA.Name, m.Name, b.Module, b.In, b.Out, b.Kernel)
				}
				seen := false
				for _, s := range slots[b.Module] {
					seen = seen || s.m == m
				}
				if !seen {
					slots[b.Module] = append(slots[b.Module], slot{a.LoRA, m, rank[b.Module]})
					rank[b.Module] += m.Rank
				}
			}
		}
	}
	out := make(map[string]BranchTensor, 2*len(branches))
	for _, b := range branches {
		r := max(rank[b.Module], 1)
		kk := b.Kernel * b.Kernel
		var down, up BranchTensor
		// One LoRA module on the branch: its own Down (a Conv's is already
		// [R, In, k, k]; a Linear's transposed once at load) is the input,
		// shared, not copied.
		single := len(slots[b.Module]) == 1
		if b.Kind == modelgen.Linear {
			down = BranchTensor{Shape: []int64{int64(b.In), int64(r)}}
			if single {
				down.Data = slots[b.Module][0].m.downT()
			} else {
				down.Data = make([]float32, b.In*r)
			}
			up = BranchTensor{Shape: []int64{int64(batch), int64(r), int64(b.Out)}, Data: make([]float32, batch*r*b.Out)}
		} else {
			down = BranchTensor{Shape: []int64{int64(r), int64(b.In), int64(b.Kernel), int64(b.Kernel)}}
			if single {
				down.Data = slots[b.Module][0].m.Down
			} else {
				down.Data = make([]float32, r*b.In*kk)
			}
			up = BranchTensor{Shape: []int64{int64(batch), int64(b.Out), int64(r)}, Data: make([]float32, batch*b.Out*r)}
		}
		for _, s := range slots[b.Module] {
			if single {
				break
			}
			m := s.m
			in := b.In * kk
			for k := range m.Rank {
				row := m.Down[k*in : (k+1)*in]
				if b.Kind == modelgen.Linear {
					for i, v := range row { // Down [In, R]: column s.offset+k
						down.Data[i*r+s.offset+k] = v
					}
				} else {
					copy(down.Data[(s.offset+k)*in:], row)
				}
			}
		}
		for i, row := range rows {
			for _, a := range row {
				for _, s := range slots[b.Module] {
					if s.lora != a.LoRA {
						continue
					}
					f := a.Multiplier * s.m.Scale()
					rk := s.m.Rank
					if b.Kind == modelgen.Linear { // Up [batch, R, Out]: rows of upᵀ
						ut := s.m.upT()
						for k := range rk {
							dst := up.Data[(i*r+s.offset+k)*b.Out:][:b.Out]
							for o, v := range ut[k*b.Out : (k+1)*b.Out] {
								dst[o] += f * v
							}
						}
						continue
					}
					for o := range b.Out { // Up [batch, Out, R]
						dst := up.Data[(i*b.Out+o)*r+s.offset:][:rk]
						for k, v := range s.m.Up[o*rk : (o+1)*rk] {
							dst[k] += f * v
						}
					}
				}
			}
		}
		out[b.Down], out[b.Up] = down, up
	}
	return out, nil
}

// ExtraTokensInput is the text-encoder input that holds the vectors of
// token ids at and above the vocabulary size (textual-inversion
// embeddings), [K, hidden] (K ≥ 1; zeros when unused).
const ExtraTokensInput = "extra_token_embeddings"

// addExtraTokens rewrites a built text encoder so that ids ≥ vocab index
// the rows of input ExtraTokensInput instead of the token table:
// Where(ids ≥ vocab, Gather(extra, ids−vocab), Gather(table, ids)).
func addExtraTokens(m *onnxpb.Model, vocab int) error {
	g := m.Graph
	var idsType, floatType onnxpb.DataType
	for _, in := range g.Input {
		if in.Name == "input_ids" {
			idsType = in.ElemType
		}
	}
	for _, out := range g.Output {
		if out.Name == "last_hidden_state" {
			floatType = out.ElemType
		}
	}
	at := -1
	for i, n := range g.Nodes {
		if n.OpType == "Gather" && len(n.Input) == 2 && n.Input[1] == "input_ids" {
			at = i
		}
	}
	if at < 0 || idsType == onnxpb.Undefined || floatType == onnxpb.Undefined {
		return fmt.Errorf("ckpt: text encoder graph has no token-embedding Gather on input_ids")
	}
	hidden := int64(0)
	for _, out := range g.Output {
		if out.Name == "last_hidden_state" && len(out.Dims) == 3 {
			hidden = out.Dims[2].Value
		}
	}
	intConst := func(name string, v int64) string {
		t := &onnxpb.Tensor{Name: name, DataType: idsType}
		if idsType == onnxpb.Int64 {
			t.Int64Data = []int64{v}
		} else {
			t.Int32Data = []int32{int32(v)}
		}
		g.Initializer = append(g.Initializer, t)
		return name
	}
	vocabC, zero := intConst("const/ti_vocab", int64(vocab)), intConst("const/ti_zero", 0)
	g.Initializer = append(g.Initializer, &onnxpb.Tensor{Name: "const/ti_axes", DataType: onnxpb.Int64, Dims: []int64{1}, Int64Data: []int64{-1}})
	ext := onnxpb.ValueInfo{Name: ExtraTokensInput, ElemType: floatType, Dims: []onnxpb.Dim{{Param: "extra_tokens"}, {Value: hidden}}}
	if hidden <= 0 {
		ext.Dims[1] = onnxpb.Dim{Param: "hidden"}
	}
	g.Input = append(g.Input, ext)
	gather := g.Nodes[at]
	table, out := gather.Input[0], gather.Output[0]
	node := func(op, name string, ins []string, attrs ...*onnxpb.Attribute) *onnxpb.Node {
		return &onnxpb.Node{OpType: op, Name: "ti/" + name, Input: ins, Output: []string{"ti/" + name + "_out"}, Attribute: attrs}
	}
	isExtra := node("GreaterOrEqual", "is_extra", []string{"input_ids", vocabC})
	base := node("Where", "base_ids", []string{isExtra.Output[0], zero, "input_ids"})
	shifted := node("Sub", "shifted", []string{"input_ids", vocabC})
	extraIDs := node("Where", "extra_ids", []string{isExtra.Output[0], shifted.Output[0], zero})
	g1 := node("Gather", "table", []string{table, base.Output[0]})
	g2 := node("Gather", "extra", []string{ExtraTokensInput, extraIDs.Output[0]})
	mask := node("Unsqueeze", "mask", []string{isExtra.Output[0], "const/ti_axes"})
	where := &onnxpb.Node{OpType: "Where", Name: "ti/select", Input: []string{mask.Output[0], g2.Output[0], g1.Output[0]}, Output: []string{out}}
	nodes := slices.Clone(g.Nodes[:at])
	nodes = append(nodes, isExtra, base, shifted, extraIDs, g1, g2, mask, where)
	g.Nodes = append(nodes, g.Nodes[at+1:]...)
	return nil
}

// downT returns Down transposed, [in·k·k, Rank], and upT Up transposed,
// [Rank, out], computed once.
func (m *LoRAModule) downT() []float32 {
	m.transpose()
	return m.t
}

func (m *LoRAModule) upT() []float32 {
	m.transpose()
	return m.ut
}

func (m *LoRAModule) transpose() {
	m.tOnce.Do(func() {
		tr := func(x []float32, rows int) []float32 {
			cols := len(x) / rows
			t := make([]float32, len(x))
			for r := range rows {
				for c, v := range x[r*cols : (r+1)*cols] {
					t[c*rows+r] = v
				}
			}
			return t
		}
		m.t = tr(m.Down, m.Rank)
		m.ut = tr(m.Up, len(m.Up)/m.Rank)
	})
}
