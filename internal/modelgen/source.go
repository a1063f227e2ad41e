package modelgen

import (
	"errors"
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// Component names the PyTorch module whose state dict a Source is asked
// about: parameter names are that module's state-dict keys.
type Component string

// The components of the Stable Diffusion families. VAE covers both the
// decoder and the encoder graphs (keys "decoder.…", "encoder.…",
// "quant_conv.…", "post_quant_conv.…", as in diffusers' AutoencoderKL);
// TAESD likewise covers both halves of diffusers' AutoencoderTiny
// ("decoder.layers.…", "encoder.layers.…").
const (
	TextEncoder  Component = "text_encoder"   // transformers CLIPTextModel
	TextEncoder2 Component = "text_encoder_2" // transformers CLIPTextModelWithProjection (SDXL)
	UNet         Component = "unet"           // diffusers UNet2DConditionModel
	VAE          Component = "vae"            // diffusers AutoencoderKL
	TAESD        Component = "taesd"          // diffusers AutoencoderTiny
)

// Source supplies a component's parameters. name is the parameter's key in
// the diffusers / transformers state dict of that component, e.g.
// "down_blocks.0.resnets.0.conv1.weight" (UNet),
// "text_model.encoder.layers.0.self_attn.q_proj.weight" (TextEncoder,
// TextEncoder2), "decoder.mid_block.attentions.0.to_q.weight" (VAE); shape
// is its PyTorch shape (Linear weight [out, in], Conv [out, in, kh, kw],
// GroupNorm and LayerNorm weight [c]). init is the builder's suggestion for
// random weights (a checkpoint source ignores it).
//
// The returned tensor must have exactly that shape and a float element type
// (onnxpb.Float, Float16 or BFloat16); its name is ignored (the builder
// names initializers after the parameter). It may hold its bytes (RawData,
// FloatData or Fill) or be an external reference (onnxpb.ExternalRef) into
// an existing file, which is written as ONNX external data without reading
// it. The graph adapts to what the Source returns: another float type is
// cast to the graph's in the graph; a Linear weight held in memory is
// written transposed for MatMul, while an external one is transposed in the
// graph (ONNX Runtime folds the Transpose and the Cast at load). A Source
// returns an error for a parameter it does not have; the Build functions
// return the first such error, wrapped with the component and parameter
// name. A Source must be safe for concurrent use when the Build functions
// are called concurrently with it.
type Source interface {
	Param(component Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error)
}

// ErrNoParam is what a Source's error wraps when it has no such parameter
// (MapSource returns it; other sources should too).
var ErrNoParam = errors.New("no such parameter")

// Init describes how RandomSource draws a parameter's values: uniformly
// from Mean ± Std·√3 (so their standard deviation is Std).
type Init struct {
	Mean, Std float64
	// Transposed is set for a 2-d parameter the builder stores transposed
	// when it is held in memory (a Linear weight [out, in] stored as
	// [in, out] for MatMul). RandomSource then draws its values in the
	// stored order, so generated files keep the weights they had when the
	// builder drew them itself. Other sources ignore it.
	Transposed bool
}

// RandomSource gives every parameter deterministic pseudo-random values
// drawn as Init says, from a SplitMix64 stream keyed by Seed and the
// parameter's name (not the component's), so that a value does not depend
// on the order in which the graph is built or on the rest of the graph.
// Values are produced lazily (onnxpb.Tensor.Fill) when the model is
// written. Type is the element type: onnxpb.Float (the zero value),
// Float16 or BFloat16.
type RandomSource struct {
	Seed uint64
	Type onnxpb.DataType
}

// Param returns the parameter's random values. It never fails for a float
// Type and non-negative dims.
func (s RandomSource) Param(_ Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error) {
	typ := s.Type
	if typ == onnxpb.Undefined {
		typ = onnxpb.Float
	}
	if !isFloat(typ) {
		return nil, fmt.Errorf("modelgen: RandomSource: element type %v is not a float type", typ)
	}
	for _, d := range shape {
		if d < 0 {
			return nil, fmt.Errorf("modelgen: RandomSource: %s: negative dimension in %v", name, shape)
		}
	}
	t := &onnxpb.Tensor{Name: name, Dims: append([]int64(nil), shape...), DataType: typ}
	n := t.NumElements()
	key := s.Seed ^ hashName(name)
	rows, cols := int64(1), n // stream order: row-major over [rows, cols] stored as [cols, rows]
	if init.Transposed && len(shape) == 2 {
		rows, cols = shape[0], shape[1]
	}
	t.Fill = func(dst []byte) {
		r := splitmix{state: key}
		a := init.Std * math.Sqrt(3)
		if rows == 1 {
			for i := int64(0); i < n; i++ {
				putFloat(dst, typ, i, float32(init.Mean+a*(2*r.float64()-1)))
			}
			return
		}
		// The stream runs over the stored [cols, rows] layout: element
		// (c, r) of the stored tensor is element (r, c) of this one.
		for c := int64(0); c < cols; c++ {
			for rr := int64(0); rr < rows; rr++ {
				putFloat(dst, typ, rr*cols+c, float32(init.Mean+a*(2*r.float64()-1)))
			}
		}
	}
	return t, nil
}

// MapSource is a Source backed by a map from component and parameter name
// to tensor (for tests and small models). A missing key is an error
// wrapping ErrNoParam.
type MapSource map[Component]map[string]*onnxpb.Tensor

// Param returns the tensor stored under component and name.
func (m MapSource) Param(c Component, name string, _ []int64, _ Init) (*onnxpb.Tensor, error) {
	t, ok := m[c][name]
	if !ok {
		return nil, fmt.Errorf("%s has no %s: %w", c, name, ErrNoParam)
	}
	return t, nil
}

func isFloat(t onnxpb.DataType) bool {
	return t == onnxpb.Float || t == onnxpb.Float16 || t == onnxpb.BFloat16
}

// ModuleKind is the kind of a Module.
type ModuleKind int

// Module kinds.
const (
	Linear ModuleKind = iota // torch.nn.Linear
	Conv                     // torch.nn.Conv2d
)

// String returns "linear" or "conv".
func (k ModuleKind) String() string {
	if k == Conv {
		return "conv"
	}
	return "linear"
}

// Module describes one Linear or Conv module as the builder emits it.
type Module struct {
	Component Component
	// Name is the diffusers / transformers module path, e.g.
	// "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"; its
	// parameters are Name+".weight" and Name+".bias".
	Name string
	Kind ModuleKind
	// In and Out are the input and output features (channels for a Conv).
	In, Out int
	// Bias tells whether the module has a bias.
	Bias bool
	// Kernel, Stride and Pad describe a Conv (square kernel, equal strides;
	// Pad is the padding on each side, or -1 for asymmetric padding).
	Kernel, Stride, Pad int
}

// ModuleHook is called after each Linear and Conv module the builder
// emits, with the module's input x and output y (graph value names). It
// returns the value that replaces y (y itself to change nothing). It may
// add graph inputs, initializers and nodes through b, e.g. a low-rank
// branch fed per request. An error stops the build and is returned by the
// Build function.
type ModuleHook func(b *Builder, m Module, x, y string) (string, error)
