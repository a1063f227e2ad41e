package ckpt

import (
	"fmt"
	"maps"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

// ModuleKind is the kind of layer a LoRA module adapts.
type ModuleKind string

// LoRA module kinds, named as kohya's tools name them.
const (
	Linear  ModuleKind = "linear"
	Conv1x1 ModuleKind = "conv1x1"
	Conv3x3 ModuleKind = "conv3x3" // any k×k kernel (LoCon)
)

// Target is a layer a LoRA can adapt: a Linear or Conv weight of the model.
type Target struct {
	Component Component
	Module    string  // diffusers module path, e.g. "down_blocks.1.attentions.0.proj_in"
	Shape     []int64 // the weight's PyTorch shape
}

// Targets maps kohya module names (lora_unet_…, lora_te_…) to the layers
// of one model.
type Targets map[string]Target

// LoRATargets returns the kohya/AUTOMATIC1111 names of every Linear and
// Conv weight of the mapped model: the diffusers module path with "." →
// "_" (the names kohya's scripts write), and for the UNet also the
// original-layout path (the names some LoRA tools write, which
// AUTOMATIC1111 accepts too). SDXL's text encoders are lora_te1_ and
// lora_te2_; a single text encoder is lora_te_.
func (m *Mapping) LoRATargets() Targets {
	ts := Targets{}
	_, two := m.Params[TextEncoder2]
	_, one := m.Params[TextEncoder]
	for c, ps := range m.Params {
		var prefix string
		switch {
		case c == UNet:
			prefix = "lora_unet_"
		case c == VAE:
			continue
		case one && two && c == TextEncoder:
			prefix = "lora_te1_"
		case one && two && c == TextEncoder2:
			prefix = "lora_te2_"
		default:
			prefix = "lora_te_"
		}
		for name, p := range ps {
			mod, ok := strings.CutSuffix(name, ".weight")
			if !ok || (len(p.Shape) != 2 && len(p.Shape) != 4) || strings.Contains(mod, "embedding") {
				continue
			}
			t := Target{Component: c, Module: mod, Shape: p.Shape}
			ts[prefix+strings.ReplaceAll(mod, ".", "_")] = t
			if c == UNet {
				if ldm, ok := strings.CutPrefix(p.Key, unetPrefix); ok {
					ts[prefix+strings.ReplaceAll(strings.TrimSuffix(ldm, ".weight"), ".", "_")] = t
				}
			}
		}
	}
	return ts
}

// LoRA is a parsed kohya/AUTOMATIC1111 LoRA (or LoCon) file, its tensors
// held as float32. It is immutable and safe for concurrent use.
type LoRA struct {
	// Name is the file's base name without extension, the name prompts use
	// in <lora:name:weight>.
	Name     string
	Path     string
	Metadata map[string]string
	Modules  []LoRAModule // sorted by Name
	// Skipped lists the keys that were not understood and were skipped
	// (LoadLoRA with skipUnknown).
	Skipped []string
}

// LoRAModule is one adapted layer: ΔW = (Alpha/Rank) · up·down, reshaped to
// the weight's shape.
type LoRAModule struct {
	Name   string // the kohya name, e.g. lora_unet_down_blocks_0_resnets_0_conv1
	Target Target
	Kind   ModuleKind
	Rank   int
	Alpha  float32 // the file's alpha, or Rank when the file has none
	// Down is [Rank, in·kh·kw] and Up [out, Rank], row-major.
	Down, Up []float32
	// Kernel is the down projection's kernel size (1 for Linear and 1×1).
	Kernel int

	tOnce *sync.Once // Down and Up transposed (downT, upT), for LoRA branches
	t, ut []float32
}

// Scale returns Alpha/Rank, the factor kohya applies to up·down.
func (m *LoRAModule) Scale() float32 { return m.Alpha / float32(m.Rank) }

// UnknownKeysError is returned by LoadLoRA for keys that fit no layer of
// the model or that use a network type this loader does not implement.
type UnknownKeysError struct {
	Path string
	Keys []string // a sample
	More int
	Hint string
}

func (e *UnknownKeysError) Error() string {
	s := fmt.Sprintf("ckpt: LoRA %s: %d keys fit no layer of the model", e.Path, len(e.Keys)+e.More)
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	s += ": " + strings.Join(e.Keys, ", ")
	if e.More > 0 {
		s += fmt.Sprintf(" and %d more", e.More)
	}
	return s + "; skip them to apply the rest"
}

// LoadLoRA reads the LoRA file at path for a model with layers targets.
// Keys that fit no layer are an *UnknownKeysError unless skipUnknown, which
// records them in LoRA.Skipped.
func LoadLoRA(path string, targets Targets, skipUnknown bool) (*LoRA, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseLoRA(f, targets, skipUnknown)
}

func parseLoRA(f *File, targets Targets, skipUnknown bool) (*LoRA, error) {
	base := filepath.Base(f.Path())
	l := &LoRA{Name: strings.TrimSuffix(base, filepath.Ext(base)), Path: f.Path(), Metadata: f.Metadata}
	type parts struct{ down, up, alpha string }
	groups := map[string]*parts{}
	var unknown []string
	for _, t := range f.Tensors {
		mod, suffix, ok := strings.Cut(t.Name, ".")
		g := groups[mod]
		if g == nil {
			g = &parts{}
		}
		switch {
		case !ok:
			unknown = append(unknown, t.Name)
			continue
		case suffix == "lora_down.weight":
			g.down = t.Name
		case suffix == "lora_up.weight":
			g.up = t.Name
		case suffix == "alpha":
			g.alpha = t.Name
		default: // lora_mid (Tucker LoCon), hada_* (LoHa), lokr_*, dora_scale, diffusers/PEFT names…
			unknown = append(unknown, t.Name)
			continue
		}
		groups[mod] = g
	}
	for _, name := range slices.Sorted(maps.Keys(groups)) {
		g := groups[name]
		tgt, ok := targets[name]
		if !ok || g.down == "" || g.up == "" {
			for _, k := range []string{g.down, g.up, g.alpha} {
				if k != "" {
					unknown = append(unknown, k)
				}
			}
			continue
		}
		m, err := loraModule(f, name, tgt, g.down, g.up, g.alpha)
		if err != nil {
			return nil, err
		}
		l.Modules = append(l.Modules, m)
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		if !skipUnknown {
			e := &UnknownKeysError{Path: f.Path(), Keys: unknown, Hint: loraHint(f, len(l.Modules))}
			if len(unknown) > 10 {
				e.Keys, e.More = unknown[:10], len(unknown)-10
			}
			return nil, e
		}
		l.Skipped = unknown
	}
	if len(l.Modules) == 0 {
		return nil, fmt.Errorf("ckpt: LoRA %s: no module fits a layer of the model", f.Path())
	}
	return l, nil
}

// loraHint guesses why a LoRA does not fit, from kohya's metadata.
func loraHint(f *File, matched int) string {
	v := f.Metadata["ss_base_model_version"]
	switch {
	case matched == 0 && v != "":
		return "it was trained for " + v
	case matched == 0:
		return "is it for another model family?"
	}
	return ""
}

func loraModule(f *File, name string, tgt Target, downKey, upKey, alphaKey string) (LoRAModule, error) {
	down, _ := f.Lookup(downKey)
	up, _ := f.Lookup(upKey)
	bad := func(format string, args ...any) (LoRAModule, error) {
		return LoRAModule{}, fmt.Errorf("ckpt: LoRA %s: %s: %s", f.Path(), name, fmt.Sprintf(format, args...))
	}
	w := tgt.Shape
	if len(down.Shape) != len(up.Shape) || (len(down.Shape) != 2 && len(down.Shape) != 4) {
		return bad("lora_down %v and lora_up %v are not a Linear or Conv pair", down.Shape, up.Shape)
	}
	r := down.Shape[0]
	if r <= 0 || up.Shape[1] != r {
		return bad("lora_down %v and lora_up %v disagree on the rank", down.Shape, up.Shape)
	}
	m := LoRAModule{Name: name, Target: tgt, Rank: int(r), Alpha: float32(r), Kernel: 1, tOnce: new(sync.Once)}
	var in, kernel int64 = down.Shape[1], 1
	switch {
	case len(down.Shape) == 2:
		m.Kind = Linear
	case up.Shape[2] != 1 || up.Shape[3] != 1:
		return bad("lora_up %v is not a 1×1 kernel", up.Shape)
	case down.Shape[2] == 1 && down.Shape[3] == 1:
		m.Kind = Conv1x1
	case down.Shape[2] == down.Shape[3]:
		m.Kind, kernel = Conv3x3, down.Shape[2]
	default:
		return bad("lora_down kernel %v is not square", down.Shape)
	}
	m.Kernel = int(kernel)
	// The weight may be a Linear or a conv with a 1×1 kernel either way
	// (SD 2.x's proj_in is Linear, SD 1.x's a 1×1 conv).
	wantKernel := int64(1)
	if len(w) == 4 {
		wantKernel = w[2]
		if w[2] != w[3] {
			return bad("target weight %v has a non-square kernel", w)
		}
	}
	if w[0] != up.Shape[0] || w[1] != in || wantKernel != kernel {
		return bad("lora_down %v / lora_up %v do not fit the %s weight %v (is the LoRA for another model family?)", down.Shape, up.Shape, tgt.Module, w)
	}
	var err error
	if m.Down, err = f.Float32s(downKey); err != nil {
		return LoRAModule{}, err
	}
	if m.Up, err = f.Float32s(upKey); err != nil {
		return LoRAModule{}, err
	}
	if alphaKey != "" {
		a, err := f.Float32s(alphaKey)
		if err != nil {
			return LoRAModule{}, err
		}
		if len(a) != 1 {
			return bad("alpha has %d values", len(a))
		}
		if a[0] != 0 { // kohya: alpha 0 or None means alpha = rank
			m.Alpha = a[0]
		}
	}
	return m, nil
}

// AddDelta adds multiplier · (Alpha/Rank) · up·down to w, the module's
// target weight as float32 in its PyTorch layout, evaluated in float32 in
// kohya's order, w + (multiplier · (up@down)) · scale, with up@down
// accumulated by fused multiply-adds as torch's CPU matmul does (on the
// reference LoRA this is bit-identical to kohya's own merge).
func (m *LoRAModule) AddDelta(w []float32, multiplier float32) {
	out, r := int(m.Target.Shape[0]), m.Rank
	in := len(m.Down) / r
	if len(w) != out*in || len(m.Up) != out*r {
		panic(fmt.Sprintf("ckpt: AddDelta: %s: weight of %d values for a %d×%d delta", m.Name, len(w), out, in))
	}
	scale := m.Scale()
	for o := range out {
		up := m.Up[o*r : (o+1)*r]
		row := w[o*in : (o+1)*in]
		for i := range row {
			var s float32
			for k, u := range up {
				s = float32(math.FMA(float64(u), float64(m.Down[k*in+i]), float64(s)))
			}
			row[i] += (multiplier * s) * scale
		}
	}
}

// Applied is a LoRA with the multiplier it is applied at.
type Applied struct {
	LoRA       *LoRA
	Multiplier float32
}

// Deltas groups the modules of several LoRAs by the weight they adapt:
// component → diffusers weight key ("….weight") → the modules and
// multipliers to add, in the order given.
func Deltas(loras []Applied) map[Component]map[string][]ModuleDelta {
	out := map[Component]map[string][]ModuleDelta{}
	for _, a := range loras {
		for i := range a.LoRA.Modules {
			m := &a.LoRA.Modules[i]
			c := m.Target.Component
			if out[c] == nil {
				out[c] = map[string][]ModuleDelta{}
			}
			key := m.Target.Module + ".weight"
			out[c][key] = append(out[c][key], ModuleDelta{Module: m, Multiplier: a.Multiplier})
		}
	}
	return out
}

// ModuleDelta is one module's contribution to a weight.
type ModuleDelta struct {
	Module     *LoRAModule
	Multiplier float32
}

// Merge returns w with every delta added in turn (w is modified and
// returned).
func Merge(w []float32, ds []ModuleDelta) []float32 {
	for _, d := range ds {
		d.Module.AddDelta(w, d.Multiplier)
	}
	return w
}
