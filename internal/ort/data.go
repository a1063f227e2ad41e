package ort

import (
	"context"
	"errors"
	"fmt"
	"strings"

	onnx "github.com/yalue/onnxruntime_go"
)

// externalFolderKey is ONNX Runtime's session config entry that tells a
// session created from bytes where the model's external data files lie.
const externalFolderKey = "session.model_external_initializers_file_folder_path"

// OpenData loads a model held in memory (a serialized ModelProto, e.g. a
// rewritten graph) whose external data files, if any, lie in extDir. name
// is used in messages and by Session.Name. ins and outs describe the
// model's inputs and outputs as for Open. The model bytes are not retained
// after OpenData returns. The caller must Close the session.
func OpenData(ctx context.Context, name string, model []byte, extDir string, ins, outs []IOInfo, o Options) (s *Session, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(model) == 0 {
		return nil, fmt.Errorf("ort: %s: empty model", name)
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
	if extDir != "" {
		if err := so.AddSessionConfigEntry(externalFolderKey, extDir); err != nil {
			return nil, fmt.Errorf("ort: %s: external data folder: %w", name, err)
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
		webgpuOpen.Lock() // as in Open
	}
	sess, err := onnx.NewDynamicAdvancedSessionWithONNXData(model, names(ins), names(outs), so)
	if gpu {
		webgpuOpen.Unlock()
	}
	if err != nil {
		return nil, fmt.Errorf("ort: open %s: %w", name, err)
	}
	return &Session{name: name, in: clone(ins), out: clone(outs), inNames: names(ins), sess: sess}, nil
}
