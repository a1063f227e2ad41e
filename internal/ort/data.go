package ort

import (
	"context"
	"fmt"

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
func OpenData(ctx context.Context, name string, model []byte, extDir string, ins, outs []IOInfo, o Options) (*Session, error) {
	if len(model) == 0 {
		return nil, fmt.Errorf("ort: %s: empty model", name)
	}
	setup := func(so *onnx.SessionOptions) error {
		if extDir == "" {
			return nil
		}
		if err := so.AddSessionConfigEntry(externalFolderKey, extDir); err != nil {
			return fmt.Errorf("external data folder: %w", err)
		}
		return nil
	}
	return open(ctx, name, ins, outs, o, setup, func(in, out []string, so *onnx.SessionOptions) (*onnx.DynamicAdvancedSession, error) {
		return onnx.NewDynamicAdvancedSessionWithONNXData(model, in, out, so)
	})
}
