package ort

import (
	"errors"
	"fmt"
	"math"

	onnx "github.com/yalue/onnxruntime_go"
)

// Tensors to ORT values and back: the copies, type and shape checks at
// the cgo door.

func ortShape(shape []int64) onnx.Shape { return onnx.NewShape(shape...) }

// toValue wraps t as an ORT value of the input's type.
func toValue(info IOInfo, t Tensor) (onnx.Value, error) {
	if err := checkShape(info, t.Shape); err != nil {
		return nil, err
	}
	switch info.DType {
	case Float32:
		d, ok := t.Data.([]float32)
		if !ok {
			return nil, fmt.Errorf("want []float32 data, got %T", t.Data)
		}
		return newValue(t.Shape, d)
	case Float16:
		d, ok := t.Data.([]float32)
		if !ok {
			return nil, fmt.Errorf("want []float32 data, got %T", t.Data)
		}
		if err := checkLen(t.Shape, len(d)); err != nil {
			return nil, err
		}
		if len(t.Shape) == 0 {
			return nil, errors.New("float16 scalars are not supported by onnxruntime_go")
		}
		return onnx.NewCustomDataTensor(ortShape(t.Shape), toFloat16(d), onnx.TensorElementDataTypeFloat16)
	case Int64:
		switch v := t.Data.(type) {
		case []int64:
			return newValue(t.Shape, v)
		case []int32:
			d := make([]int64, len(v))
			for i, x := range v {
				d[i] = int64(x)
			}
			return newValue(t.Shape, d)
		}
		return nil, fmt.Errorf("want []int64 or []int32 data, got %T", t.Data)
	case Int32:
		switch v := t.Data.(type) {
		case []int32:
			return newValue(t.Shape, v)
		case []int64:
			d := make([]int32, len(v))
			for i, x := range v {
				if x < math.MinInt32 || x > math.MaxInt32 {
					return nil, fmt.Errorf("value %d at %d does not fit int32", x, i)
				}
				d[i] = int32(x)
			}
			return newValue(t.Shape, d)
		}
		return nil, fmt.Errorf("want []int32 or []int64 data, got %T", t.Data)
	}
	return nil, fmt.Errorf("unsupported input type %s", info.DType)
}

// newValue wraps d (no copy) as a tensor of the given shape, or as a
// scalar when the shape is empty.
func newValue[T float32 | int32 | int64](shape []int64, d []T) (onnx.Value, error) {
	if err := checkLen(shape, len(d)); err != nil {
		return nil, err
	}
	if len(shape) == 0 {
		return onnx.NewScalar(d[0])
	}
	return onnx.NewTensor(ortShape(shape), d)
}

func checkLen(shape []int64, n int) error {
	if want := Elems(shape); int64(n) != want {
		return fmt.Errorf("shape %v needs %d elements, data has %d", shape, want, n)
	}
	return nil
}

// checkShape compares a given shape with the model's declared one.
func checkShape(info IOInfo, shape []int64) error {
	for _, d := range shape {
		if d <= 0 {
			return fmt.Errorf("bad shape %v", shape)
		}
	}
	if info.Shape == nil {
		return nil // rank unknown or scalar: let ORT check
	}
	if len(info.Shape) != len(shape) {
		return fmt.Errorf("shape %v has rank %d, model wants %v", shape, len(shape), info.Shape)
	}
	for i, d := range info.Shape {
		if d > 0 && shape[i] != d {
			return fmt.Errorf("shape %v does not fit the model's %v", shape, info.Shape)
		}
	}
	return nil
}

// outValue makes a preallocated output value backed by t.Data.
func outValue(info IOInfo, t *Tensor) (onnx.Value, []byte, error) {
	n := Elems(t.Shape)
	if err := checkShape(info, t.Shape); err != nil {
		return nil, nil, err
	}
	switch info.DType {
	case Float32, Float16:
		d, _ := t.Data.([]float32)
		if t.Data != nil && d == nil {
			return nil, nil, fmt.Errorf("want []float32 data, got %T", t.Data)
		}
		if d == nil {
			d = make([]float32, n)
			t.Data = d
		}
		if int64(len(d)) != n {
			return nil, nil, fmt.Errorf("shape %v needs %d elements, buffer has %d", t.Shape, n, len(d))
		}
		if info.DType == Float32 {
			v, err := onnx.NewTensor(ortShape(t.Shape), d)
			return v, nil, err
		}
		buf := make([]byte, 2*n)
		v, err := onnx.NewCustomDataTensor(ortShape(t.Shape), buf, onnx.TensorElementDataTypeFloat16)
		return v, buf, err
	}
	return nil, nil, fmt.Errorf("unsupported preallocated output type %s", info.DType)
}

// fromValue copies an ORT-allocated output into a Tensor. onnxruntime_go
// has already copied the data into Go memory, so the slice is kept as is.
func fromValue(v onnx.Value) (Tensor, error) {
	shape := []int64(v.GetShape())
	switch t := v.(type) {
	case *onnx.Tensor[float32]:
		return Tensor{Shape: shape, Data: t.GetData()}, nil
	case *onnx.Tensor[int64]:
		return Tensor{Shape: shape, Data: t.GetData()}, nil
	case *onnx.Tensor[int32]:
		return Tensor{Shape: shape, Data: t.GetData()}, nil
	}
	return Tensor{}, fmt.Errorf("unsupported output value %T", v)
}
