package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"

	"github.com/sdpipe/sdpipe/internal/half"
)

// ToFloat32 decodes the little-endian bytes b of float type d (F32, F16,
// BF16 or F64) into float32 values. It panics if d is not a float type or
// len(b) is not a multiple of its size (a programmer error).
func ToFloat32(d DType, b []byte) []float32 {
	if !d.IsFloat() || len(b)%d.Size() != 0 {
		panic(fmt.Sprintf("safetensors: ToFloat32: %d bytes of %s", len(b), d))
	}
	out := make([]float32, len(b)/d.Size())
	switch d {
	case F32:
		for i := range out {
			out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		}
	case F16:
		for i := range out {
			out[i] = half.ToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
		}
	case BF16:
		for i := range out {
			out[i] = math.Float32frombits(uint32(binary.LittleEndian.Uint16(b[2*i:])) << 16)
		}
	case F64:
		for i := range out {
			out[i] = float32(math.Float64frombits(binary.LittleEndian.Uint64(b[8*i:])))
		}
	}
	return out
}

// FromFloat32 encodes v as little-endian values of float type d (F32, F16,
// BF16 or F64), rounding to nearest even. It panics if d is not a float
// type.
func FromFloat32(d DType, v []float32) []byte {
	if !d.IsFloat() {
		panic("safetensors: FromFloat32: " + string(d) + " is not a float type")
	}
	b := make([]byte, len(v)*d.Size())
	for i, x := range v {
		switch d {
		case F32:
			binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
		case F16:
			binary.LittleEndian.PutUint16(b[2*i:], half.FromFloat32(x))
		case BF16:
			binary.LittleEndian.PutUint16(b[2*i:], Float32ToBFloat16(x))
		case F64:
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(x)))
		}
	}
	return b
}

// Float32ToBFloat16 rounds f to the nearest bfloat16 value (ties to even),
// keeping NaN a NaN.
func Float32ToBFloat16(f float32) uint16 {
	x := math.Float32bits(f)
	if x&0x7fffffff > 0x7f800000 {
		return uint16(x>>16) | 0x40
	}
	x += 0x7fff + (x>>16)&1
	return uint16(x >> 16)
}
