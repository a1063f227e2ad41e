package safetensors

import (
	"encoding/binary"
	"fmt"
	"math"
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
			out[i] = HalfToFloat32(binary.LittleEndian.Uint16(b[2*i:]))
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
			binary.LittleEndian.PutUint16(b[2*i:], Float32ToHalf(x))
		case BF16:
			binary.LittleEndian.PutUint16(b[2*i:], Float32ToBFloat16(x))
		case F64:
			binary.LittleEndian.PutUint64(b[8*i:], math.Float64bits(float64(x)))
		}
	}
	return b
}

// HalfToFloat32 widens IEEE half-precision bits to float32 (exactly).
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f: // Inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		if mant == 0 {
			return math.Float32frombits(sign)
		}
		// Subnormal: normalise.
		e := uint32(113)
		for mant&0x400 == 0 {
			mant <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (mant&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// Float32ToHalf rounds f to the nearest half-precision value (ties to even),
// saturating to ±Inf and keeping NaN a NaN.
func Float32ToHalf(f float32) uint16 {
	x := math.Float32bits(f)
	sign := uint16(x>>16) & 0x8000
	exp := int32(x>>23) & 0xff
	mant := x & 0x7fffff
	switch {
	case exp == 0xff:
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp > 142:
		return sign | 0x7c00
	case exp >= 113:
		h := uint32(exp-112)<<10 | mant>>13
		rest := mant & 0x1fff
		if rest > 0x1000 || (rest == 0x1000 && h&1 == 1) {
			h++ // may carry into the exponent, up to Inf: still correct
		}
		return sign | uint16(h)
	case exp >= 102:
		m := mant | 0x800000
		shift := uint32(126 - exp)
		h := m >> shift
		rest := m & (1<<shift - 1)
		half := uint32(1) << (shift - 1)
		if rest > half || (rest == half && h&1 == 1) {
			h++
		}
		return sign | uint16(h)
	}
	return sign
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
