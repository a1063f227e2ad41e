package ort

import (
	"fmt"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// ReadIO returns the inputs and outputs a model file declares. It reads the
// file's graph signature without loading the weights or the library.
func ReadIO(path string) (ins, outs []IOInfo, err error) {
	m, err := onnxpb.ReadIO(path)
	if err != nil {
		return nil, nil, err
	}
	if ins, outs, err = IOOf(m); err != nil {
		return nil, nil, fmt.Errorf("ort: %s: model declares no inputs or no outputs", path)
	}
	return ins, outs, nil
}

func fromValueInfo(v onnxpb.ValueInfo) IOInfo {
	io := IOInfo{Name: v.Name, DType: DType(v.ElemType)}
	if v.UnknownRank {
		return io
	}
	io.Shape = make([]int64, len(v.Dims))
	for i, d := range v.Dims {
		io.Shape[i] = -1
		if d.Param == "" && d.Value > 0 {
			io.Shape[i] = d.Value
		}
	}
	if len(io.Shape) == 0 {
		io.Shape = nil
	}
	return io
}
