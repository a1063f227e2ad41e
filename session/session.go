// Package session holds what the component packages (textenc, unet and
// vae) share in their API: the Options of the ONNX Runtime session each
// of them opens, the element types of model inputs and outputs, the
// SignatureError of a model file that is not the component it was opened
// as, and the Warmup a loaded component runs. It imports nothing of the
// project, so that a program in another module can open a component
// without package sd.
package session

import (
	"fmt"
	"log/slog"
)

// Options configures the ONNX Runtime session of one component and how
// its model is prepared. The zero value means: the library found by the
// default lookup, the CPU, ONNX Runtime's default threads, memory pattern,
// arena and spinning, and the model file as it is.
type Options struct {
	// LibraryPath is the ONNX Runtime shared library; "" means
	// $ONNXRUNTIME_SHARED_LIBRARY_PATH, the setup cache, then the system.
	LibraryPath string
	// Device is the execution provider; "" means CPU.
	Device Device
	// ProviderOptions are passed to the execution provider, e.g.
	// {"device_id": "1"} for CUDA.
	ProviderOptions map[string]string
	// Threads is the number of intra-op threads; 0 means one per core.
	Threads int
	// DisableMemoryPattern turns ONNX Runtime's memory pattern planner
	// off, DisableMemoryArena its CPU memory arena, and DisableSpinning the
	// spinning of idle pool threads.
	DisableMemoryPattern, DisableMemoryArena, DisableSpinning bool

	// Rewrites names graph rewrites to try before loading ("baddbmm",
	// "fold-scale", "mha"): the rewritten graph is run beside the
	// original on the component's own example inputs and used only when
	// their outputs agree within RewriteTolerance; otherwise the original
	// is loaded. The folder's files are never modified.
	Rewrites []string
	// RewriteCache keeps rewritten graphs and their verdicts, so that
	// only the first open of a model pays for them; "" rewrites and
	// verifies at every open. It must be on the model's file system
	// (rewritten graphs sit beside hard links to the weights).
	RewriteCache string
	// Logger receives what happens to the rewrites; nil discards it.
	Logger *slog.Logger
}

// RewriteTolerance is the largest output difference a rewrite may cause
// on the verification inputs; a rewrite that exceeds it is refused.
const RewriteTolerance = 1e-4

// Device names an ONNX Runtime execution provider. Which ones work depends
// on how the loaded library was built; an unavailable one is an error
// from the component's Open.
type Device string

// The devices Options accepts.
const (
	CPU      Device = "cpu"
	CUDA     Device = "cuda"
	TensorRT Device = "tensorrt"
	CoreML   Device = "coreml"
	DirectML Device = "directml"
	OpenVINO Device = "openvino"
	WebGPU   Device = "webgpu"
)

// DType is the element type of a model input or output, numbered as in
// onnx.proto.
type DType int

// The element types models use.
const (
	Float32  DType = 1
	Uint8    DType = 2
	Int8     DType = 3
	Int32    DType = 6
	Int64    DType = 7
	Bool     DType = 9
	Float16  DType = 10
	Float64  DType = 11
	BFloat16 DType = 16
)

// String returns the type's name, e.g. "float16".
func (d DType) String() string {
	switch d {
	case Float32:
		return "float32"
	case Float16:
		return "float16"
	case Int32:
		return "int32"
	case Int64:
		return "int64"
	case Float64:
		return "float64"
	case Uint8:
		return "uint8"
	case Int8:
		return "int8"
	case Bool:
		return "bool"
	case BFloat16:
		return "bfloat16"
	}
	return fmt.Sprintf("dtype(%d)", int(d))
}

// SignatureError reports a model file whose inputs or outputs are not
// those of the component it was opened as.
type SignatureError struct {
	Component string // the package that read it: "textenc", "unet" or "vae"
	Path      string // the model file
	Reason    string // what is wrong, e.g. "sample has 3 channels, want 4 (or 9 for inpainting)"
}

// Error returns "<component>: <path>: <reason>".
func (e *SignatureError) Error() string {
	return fmt.Sprintf("%s: %s: %s", e.Component, e.Path, e.Reason)
}

// ExternalFile is an external data file a model reads its weights from.
type ExternalFile struct {
	Name string // relative to the model file's folder, slash-separated
	Size int64  // the bytes of it the model reads: the file must be at least this long
}

// Warmup configures a component's warm-up: its session is called at the
// given image size until two consecutive calls differ by less than
// Steady, so that the first requests do not pay for ONNX Runtime's
// first-call allocations.
type Warmup struct {
	Width, Height int     // the image size in pixels
	MaxCalls      int     // the most calls; 0 means 4
	Steady        float64 // the relative change that counts as steady; 0 means 0.1
}

// Loaded says how a component's model was loaded; the models of the
// component packages embed it.
type Loaded struct {
	// File is the model file the session was loaded from: the model's
	// own, or its rewritten graph in the rewrite cache.
	File string
	// Rewrites says what was rewritten in the graph (e.g. "baddbmm×16
	// mha×16 (3195→2891 nodes)"), or why nothing was; "" when Options
	// asked for no rewrite.
	Rewrites string
}
