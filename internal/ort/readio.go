package ort

import (
	"fmt"

	onnx "github.com/yalue/onnxruntime_go"
)

// ReadIO returns the inputs and outputs a model file declares.
func ReadIO(path string, libraryPath string) (ins, outs []IOInfo, err error) {
	if err := acquire(libraryPath); err != nil {
		return nil, nil, err
	}
	defer func() {
		if e := release(); e != nil && err == nil {
			err = e
		}
	}()
	i, o, err := onnx.GetInputOutputInfo(path)
	if err != nil {
		return nil, nil, fmt.Errorf("ort: read %s: %w", path, err)
	}
	conv := func(v []onnx.InputOutputInfo) []IOInfo {
		r := make([]IOInfo, len(v))
		for k, x := range v {
			r[k] = IOInfo{Name: x.Name, DType: DType(x.DataType), Shape: []int64(x.Dimensions)}
			if len(r[k].Shape) == 0 {
				r[k].Shape = nil
			}
		}
		return r
	}
	return conv(i), conv(o), nil
}
