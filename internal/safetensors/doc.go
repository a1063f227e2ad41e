// Package safetensors reads and writes the safetensors file format
// (huggingface/safetensors): an 8-byte little-endian header length N, N
// bytes of JSON naming every tensor's dtype, shape and byte range, then the
// raw little-endian, row-major tensor data.
//
// Open validates the whole header against the format's rules before
// anything else is read, so that a hostile or truncated file fails with an
// error instead of a panic or an oversized allocation: the header length is
// bounded (100 MB, the reference implementation's limit) and must fit the
// file; names are unique; dtypes are known; each tensor's byte range has
// exactly the size its shape and dtype need (products checked for
// overflow); and the ranges tile the data section with no overlap and no
// hole, as the reference implementation requires. The file is never read
// whole: a tensor's bytes are read with pread (ReadAt) when asked for, and
// Tensor.Offset tells where they lie in the file, so that a caller can point
// at them (ONNX external data) without copying.
//
// A *File is safe for concurrent use; the caller must Close it.
package safetensors
