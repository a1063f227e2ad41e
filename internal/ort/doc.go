// Package ort is the project's only door to ONNX Runtime: it finds and loads
// the shared library, keeps one reference-counted ORT environment per
// process, opens sessions from model files, and runs them with a
// context.Context that can stop a call in flight.
//
// Data crosses this package's boundary as plain Go slices ([]float32,
// []int32, []int64) wrapped in Tensor; no onnxruntime_go value escapes.
// Float16 model inputs and outputs are converted to and from float32 here,
// so the rest of the project only ever sees float32.
package ort
