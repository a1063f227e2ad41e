package ort

import (
	"encoding/binary"

	"github.com/sdpipe/sdpipe/internal/half"
)

// toFloat16 converts float32 values to IEEE 754 half precision, rounding to
// nearest even, as little-endian bytes.
func toFloat16(src []float32) []byte {
	b := make([]byte, 2*len(src))
	for i, f := range src {
		binary.LittleEndian.PutUint16(b[2*i:], half.FromFloat32(f))
	}
	return b
}

// fromFloat16 converts little-endian half-precision bytes to float32.
func fromFloat16(dst []float32, src []byte) {
	for i := range dst {
		dst[i] = half.ToFloat32(binary.LittleEndian.Uint16(src[2*i:]))
	}
}
