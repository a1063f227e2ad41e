// Package onnxpb encodes and decodes the subset of the ONNX ModelProto that
// sdpipe needs, by hand over google.golang.org/protobuf/encoding/protowire
// (no generated code).
//
// Marshal and Unmarshal convert whole models held in memory. WriteFile writes
// a model to disk and can move large initializers into an external data file
// (weights.pb as the legacy diffusers exporter names it, model.onnx_data as
// optimum does), streaming each tensor so that multi-gigabyte models are never
// held in memory at once. ExternalRef makes a tensor whose bytes stay in an
// existing file (offset and length), written as external data without a
// copy; LinkFile puts a hard link to such a file in a model's folder, where
// ONNX Runtime requires it. ReadIO and ExternalFiles read only what a loader
// needs (opsets, graph inputs and outputs, initializer names and locations)
// from a model file, seeking over tensor data.
//
// Field numbers follow onnx/onnx.proto (IR version 9). Unknown fields of the
// modelled messages are kept as raw bytes and written back by Marshal; fields
// the package does not model at all (sub-graphs in attributes, sparse tensors,
// training info, functions) are preserved the same way.
//
// All functions are safe for concurrent use; a *Model must not be modified
// while it is being marshaled.
package onnxpb
