package ort

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/sdpipe/sdpipe/session"
)

// DType is a tensor element type, numbered as in onnx.proto: the public
// one of package session, which the component packages hand out.
type DType = session.DType

// The element types the project handles.
const (
	Undefined DType = 0
	Float32         = session.Float32
	Uint8           = session.Uint8
	Int8            = session.Int8
	Int32           = session.Int32
	Int64           = session.Int64
	Bool            = session.Bool
	Float16         = session.Float16
	Float64         = session.Float64
	BFloat16        = session.BFloat16
)

// IOInfo describes one input or output of a session.
type IOInfo struct {
	Name  string
	DType DType
	Shape []int64 // -1 marks a dynamic dimension; nil for a scalar
}

func (i IOInfo) String() string {
	return fmt.Sprintf("%s %s%v", i.Name, i.DType, i.Shape)
}

// Tensor is n-d data handed to or returned by Run. Data is a []float32,
// []int32 or []int64 holding the elements in row-major order; a nil Shape
// (or an empty one) is a scalar.
type Tensor struct {
	Shape []int64
	Data  any
}

// Elems returns the number of elements Shape describes.
func Elems(shape []int64) int64 {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	return n
}

// Provider names an execution provider.
type Provider string

// The execution providers Options accepts. Which ones work depends on how the
// loaded library was built; an unavailable one is an error at Open.
const (
	CPU      Provider = "cpu"
	CUDA     Provider = "cuda"
	TensorRT Provider = "tensorrt"
	CoreML   Provider = "coreml"
	DirectML Provider = "directml"
	OpenVINO Provider = "openvino"
	WebGPU   Provider = "webgpu"
)

// Options configures a session. The zero value means: the library found by
// the default lookup, ORT's default thread counts, the CPU provider, and
// full graph optimisation.
type Options struct {
	LibraryPath       string            // explicit library; else $ONNXRUNTIME_SHARED_LIBRARY_PATH, the setup cache, the system
	IntraOpThreads    int               // 0 = ORT default (one per core)
	InterOpThreads    int               // 0 = ORT default
	Provider          Provider          // "" = CPU
	ProviderOptions   map[string]string // passed through to the provider
	DisableMemArena   bool              // turn off ORT's CPU memory arena
	DisableMemPattern bool              // turn off ORT's memory pattern planner
	// NoSpinning makes the session's idle pool threads sleep at once
	// instead of spinning for more work (ORT's allow_spinning = 0): less
	// CPU burnt while other sessions compute, a little more latency to
	// wake them.
	NoSpinning bool
	// SessionConfig adds ONNX Runtime session configuration entries
	// (onnxruntime_session_options_config_keys.h), e.g.
	// "session.disable_prepacking": "1".
	SessionConfig map[string]string
	// ProfilePrefix, when set, turns on ORT's profiler: the session writes
	// a Chrome-trace JSON file named <prefix>_<date>.json when it closes.
	ProfilePrefix string
}

// ErrClosed reports use of a closed session.
var ErrClosed = errors.New("ort: session closed")

// Session is one loaded ONNX model. Run is safe for concurrent use; Close
// waits for calls in flight and must be called to free the session.
type Session struct {
	name    string // for messages: the model path
	in, out []IOInfo
	inNames []string

	mu     sync.RWMutex // Run holds it shared, Close exclusive
	sess   *onnx.DynamicAdvancedSession
	closed bool
	once   sync.Once

	gpu bool // a WebGPU session: its calls hold webgpuRun

	calls  atomic.Int64
	busyNS atomic.Int64
}

// Open loads the model at path (external data files beside it are found by
// ORT) with inputs and outputs as described by ins and outs, which come from
// the model file (see package onnxpb). The caller must Close the session.
func Open(ctx context.Context, path string, ins, outs []IOInfo, o Options) (*Session, error) {
	return open(ctx, path, ins, outs, o, nil, func(in, out []string, so *onnx.SessionOptions) (*onnx.DynamicAdvancedSession, error) {
		return onnx.NewDynamicAdvancedSession(path, in, out, so)
	})
}

// open is Open and OpenData: setup (optional) adds session options, create
// makes the session.
func open(ctx context.Context, name string, ins, outs []IOInfo, o Options,
	setup func(*onnx.SessionOptions) error,
	create func(in, out []string, so *onnx.SessionOptions) (*onnx.DynamicAdvancedSession, error)) (s *Session, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(ins) == 0 || len(outs) == 0 {
		return nil, fmt.Errorf("ort: %s: model has no inputs or no outputs", name)
	}
	if err := acquire(o.LibraryPath); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, release())
		}
	}()
	so, err := onnx.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ort: session options: %w", err)
	}
	defer func() { err = errors.Join(err, wrapDestroy(so.Destroy())) }()
	if err := configure(so, o); err != nil {
		return nil, fmt.Errorf("ort: %s: %w", name, err)
	}
	if setup != nil {
		if err := setup(so); err != nil {
			return nil, fmt.Errorf("ort: %s: %w", name, err)
		}
	}
	names := func(io []IOInfo) []string {
		n := make([]string, len(io))
		for i, v := range io {
			n[i] = v.Name
		}
		return n
	}
	gpu := Provider(strings.ToLower(string(o.Provider))) == WebGPU
	if gpu {
		// ORT's WebGPU provider crashes when sessions are created
		// concurrently (it sets up its shared device context then)
		webgpuOpen.Lock()
	}
	sess, err := create(names(ins), names(outs), so)
	if gpu {
		webgpuOpen.Unlock()
	}
	if err != nil {
		if gpu {
			// the adapter is requested when the session is created
			return nil, fmt.Errorf("ort: open %s: %w", name, &ProviderError{Provider: o.Provider, Err: classifyWebGPU(err)})
		}
		return nil, fmt.Errorf("ort: open %s: %w", name, err)
	}
	return &Session{name: name, in: clone(ins), out: clone(outs), inNames: names(ins), sess: sess, gpu: gpu}, nil
}

func wrapDestroy(err error) error {
	if err != nil {
		return fmt.Errorf("ort: destroy options: %w", err)
	}
	return nil
}

func clone(io []IOInfo) []IOInfo {
	c := make([]IOInfo, len(io))
	for i, v := range io {
		v.Shape = append([]int64(nil), v.Shape...)
		c[i] = v
	}
	return c
}

func configure(so *onnx.SessionOptions, o Options) error {
	if o.IntraOpThreads < 0 || o.InterOpThreads < 0 {
		return fmt.Errorf("negative thread count (intra %d, inter %d)", o.IntraOpThreads, o.InterOpThreads)
	}
	if o.IntraOpThreads > 0 {
		if err := so.SetIntraOpNumThreads(o.IntraOpThreads); err != nil {
			return fmt.Errorf("intra-op threads: %w", err)
		}
	}
	if o.InterOpThreads > 0 {
		if err := so.SetInterOpNumThreads(o.InterOpThreads); err != nil {
			return fmt.Errorf("inter-op threads: %w", err)
		}
	}
	if o.DisableMemArena {
		if err := so.SetCpuMemArena(false); err != nil {
			return fmt.Errorf("memory arena: %w", err)
		}
	}
	if o.DisableMemPattern {
		if err := so.SetMemPattern(false); err != nil {
			return fmt.Errorf("memory pattern: %w", err)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(o.SessionConfig)) {
		if err := so.AddSessionConfigEntry(k, o.SessionConfig[k]); err != nil {
			return fmt.Errorf("session config %s: %w", k, err)
		}
	}
	if o.ProfilePrefix != "" {
		if err := so.EnableProfiling(o.ProfilePrefix); err != nil {
			return fmt.Errorf("profiling: %w", err)
		}
	}
	if o.NoSpinning {
		for _, k := range []string{"session.intra_op.allow_spinning", "session.inter_op.allow_spinning"} {
			if err := so.AddSessionConfigEntry(k, "0"); err != nil {
				return fmt.Errorf("%s: %w", k, err)
			}
		}
	}
	return appendProvider(so, o.Provider, o.ProviderOptions)
}

// ProviderError reports an execution provider that could not be enabled.
type ProviderError struct {
	Provider Provider
	Err      error
}

func (e *ProviderError) Error() string {
	return fmt.Sprintf("execution provider %q unavailable: %v", e.Provider, e.Err)
}

func (e *ProviderError) Unwrap() error { return e.Err }

func appendProvider(so *onnx.SessionOptions, p Provider, opts map[string]string) error {
	var err error
	switch Provider(strings.ToLower(string(p))) {
	case "", CPU:
		return nil
	case CUDA:
		var co *onnx.CUDAProviderOptions
		if co, err = onnx.NewCUDAProviderOptions(); err == nil { // never pass nil options
			defer co.Destroy()
			if err = co.Update(opts); err == nil {
				err = so.AppendExecutionProviderCUDA(co)
			}
		}
	case TensorRT:
		var to *onnx.TensorRTProviderOptions
		if to, err = onnx.NewTensorRTProviderOptions(); err == nil {
			defer to.Destroy()
			if err = to.Update(opts); err == nil {
				err = so.AppendExecutionProviderTensorRT(to)
			}
		}
	case CoreML:
		err = so.AppendExecutionProviderCoreMLV2(opts)
	case DirectML:
		err = so.AppendExecutionProviderDirectML(0)
	case OpenVINO:
		err = so.AppendExecutionProviderOpenVINO(opts)
	case WebGPU:
		if VulkanLoader() == "" {
			err = ErrNoVulkanLoader
		} else if err = so.AppendExecutionProvider("WebGPU", opts); err != nil {
			err = classifyWebGPU(err)
		}
	default:
		err = fmt.Errorf("unknown provider (want cpu, cuda, tensorrt, coreml, directml, openvino or webgpu)")
	}
	if err != nil {
		return &ProviderError{Provider: p, Err: err}
	}
	return nil
}

// Name returns the model path the session was opened from.
func (s *Session) Name() string { return s.name }

// Inputs describes the session's inputs, in the order Run takes them. The
// caller must not modify the result.
func (s *Session) Inputs() []IOInfo { return s.in }

// Outputs describes the session's outputs, in the order Run fills them. The
// caller must not modify the result.
func (s *Session) Outputs() []IOInfo { return s.out }

// Stats reports how many Run calls completed and the time spent inside
// ONNX Runtime. It is safe for concurrent use.
func (s *Session) Stats() (calls int64, busy time.Duration) {
	return s.calls.Load(), time.Duration(s.busyNS.Load())
}

// Run runs the model. in holds one Tensor per input, in Inputs() order; its
// data is passed to ONNX Runtime without a copy when the input's type
// matches (float32 to a float16 input, and int32 to int64 or back, are
// converted). out holds one Tensor per output: where out[i].Shape is set,
// the output is written into out[i].Data (allocated when nil), otherwise ORT
// allocates it and out[i] receives the result. Float16 outputs need a Shape.
//
// Cancelling ctx terminates the call in flight; Run then returns ctx's
// error. Run never returns while ORT may still use the buffers.
func (s *Session) Run(ctx context.Context, in, out []Tensor) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if len(in) != len(s.in) || len(out) != len(s.out) {
		return fmt.Errorf("ort: %s: %d inputs and %d outputs given, model has %d and %d", s.name, len(in), len(out), len(s.in), len(s.out))
	}
	var vals []onnx.Value
	defer func() {
		for _, v := range vals {
			if v != nil {
				_ = v.Destroy()
			}
		}
	}()
	inVals := make([]onnx.Value, len(in))
	for i, t := range in {
		v, err := toValue(s.in[i], t)
		if err != nil {
			return fmt.Errorf("ort: %s: input %q: %w", s.name, s.in[i].Name, err)
		}
		vals = append(vals, v)
		inVals[i] = v
	}
	outVals := make([]onnx.Value, len(out))
	fp16Out := make([][]byte, len(out))
	for i := range out {
		if out[i].Shape == nil {
			if s.out[i].DType == Float16 {
				return fmt.Errorf("ort: %s: output %q is float16: its shape must be given", s.name, s.out[i].Name)
			}
			continue
		}
		v, buf, err := outValue(s.out[i], &out[i])
		if err != nil {
			return fmt.Errorf("ort: %s: output %q: %w", s.name, s.out[i].Name, err)
		}
		vals = append(vals, v)
		outVals[i], fp16Out[i] = v, buf
	}

	if s.gpu {
		webgpuRun.Lock()
	}
	err = s.run(ctx, inVals, outVals)
	if s.gpu {
		webgpuRun.Unlock()
	}
	if err != nil {
		// auto-allocated outputs may have been created: free them
		for i := range out {
			if out[i].Shape == nil && outVals[i] != nil {
				_ = outVals[i].Destroy()
			}
		}
		return err
	}
	for i := range out {
		switch {
		case fp16Out[i] != nil:
			fromFloat16(out[i].Data.([]float32), fp16Out[i])
		case out[i].Shape == nil:
			t, err := fromValue(outVals[i])
			_ = outVals[i].Destroy()
			if err != nil {
				return fmt.Errorf("ort: %s: output %q: %w", s.name, s.out[i].Name, err)
			}
			out[i] = t
		}
	}
	return nil
}

// run makes the ORT call with a terminate hook on ctx.
func (s *Session) run(ctx context.Context, in, out []onnx.Value) error {
	ro, err := onnx.NewRunOptions()
	if err != nil {
		return fmt.Errorf("ort: run options: %w", err)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { _ = ro.Terminate(); close(fired) })
	defer func() {
		if !stop() {
			<-fired // Terminate never races Destroy
		}
		_ = ro.Destroy()
	}()
	start := time.Now()
	err = s.sess.RunWithOptions(in, out, ro)
	s.busyNS.Add(int64(time.Since(start)))
	if err != nil {
		return cmp.Or(ctx.Err(), fmt.Errorf("ort: run %s: %w", s.name, err))
	}
	s.calls.Add(1)
	return nil
}

// Close waits for calls in flight, frees the session and drops its
// reference on the environment. It is idempotent.
func (s *Session) Close() error {
	var err error
	s.once.Do(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed = true
		if e := s.sess.Destroy(); e != nil {
			err = fmt.Errorf("ort: close %s: %w", s.name, e)
		}
		s.sess = nil
		err = errors.Join(err, release())
	})
	return err
}
