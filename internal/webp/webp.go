// Package webp writes images as lossless WebP (the VP8L bitstream in a
// RIFF container, as Google's WebP Lossless Bitstream Specification
// describes it). It is a plain encoder: no transforms and no
// back-references, only one set of prefix (Huffman) codes over the
// pixels' literal values, so its files are larger than libwebp's but
// decode exactly, in every WebP reader, to the pixels given. It imports
// nothing of the project.
package webp

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"image"
	"image/color"
	"io"
)

// MaxSize is the largest width or height VP8L stores (14 bits).
const MaxSize = 1 << 14

// Encode writes img to w as a lossless WebP file.
func Encode(w io.Writer, img image.Image) error {
	b := img.Bounds()
	width, height := b.Dx(), b.Dy()
	if width <= 0 || height <= 0 || width > MaxSize || height > MaxSize {
		return errors.New("webp: image size must be 1 to 16384 pixels on each side")
	}
	// ARGB values and their histograms: green, red, blue, alpha
	px := make([][4]uint8, 0, width*height)
	var hist [4][]int
	for i := range hist {
		hist[i] = make([]int, 256)
	}
	opaque := true
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			c := color.NRGBAModel.Convert(img.At(x, y)).(color.NRGBA)
			p := [4]uint8{c.G, c.R, c.B, c.A}
			px = append(px, p)
			for i, v := range p {
				hist[i][v]++
			}
			opaque = opaque && c.A == 255
		}
	}
	bw := &bitWriter{}
	bw.write(0x2f, 8) // signature
	bw.write(uint32(width-1), 14)
	bw.write(uint32(height-1), 14)
	if opaque {
		bw.write(0, 1)
	} else {
		bw.write(1, 1) // alpha_is_used
	}
	bw.write(0, 3) // version
	bw.write(0, 1) // no transform
	bw.write(0, 1) // no color cache
	bw.write(0, 1) // one group of prefix codes
	var codes [4]prefixCode
	sizes := [4]int{256 + 24, 256, 256, 256} // green (with the length prefixes), red, blue, alpha
	for i := range codes {
		counts := make([]int, sizes[i])
		copy(counts, hist[i])
		codes[i] = writePrefixCode(bw, counts)
		if i == 3 {
			writeSimpleCode(bw, 0) // distance: unused
		}
	}
	// the order of the trees is green, red, blue, alpha, distance; the
	// distance code is written after alpha above
	for _, p := range px {
		for i, v := range p {
			codes[i].put(bw, int(v))
		}
	}
	bw.flush()
	data := bw.buf
	pad := len(data) & 1
	hdr := make([]byte, 20)
	copy(hdr[0:], "RIFF")
	binary.LittleEndian.PutUint32(hdr[4:], uint32(4+8+len(data)+pad))
	copy(hdr[8:], "WEBPVP8L")
	binary.LittleEndian.PutUint32(hdr[16:], uint32(len(data)))
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	if pad == 1 {
		data = append(data, 0)
	}
	_, err := w.Write(data)
	return err
}

// bitWriter writes bits least significant first, as VP8L reads them.
type bitWriter struct {
	buf []byte
	acc uint64
	n   uint
}

func (b *bitWriter) write(v uint32, nbits uint) {
	b.acc |= uint64(v) << b.n
	b.n += nbits
	for b.n >= 8 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc >>= 8
		b.n -= 8
	}
}

func (b *bitWriter) flush() {
	if b.n > 0 {
		b.buf = append(b.buf, byte(b.acc))
		b.acc, b.n = 0, 0
	}
}

// prefixCode is a canonical prefix code: each symbol's length and its
// code, bit-reversed so that writing it least significant bit first sends
// the code's first bit first.
type prefixCode struct {
	lengths []uint8
	codes   []uint32
}

func (c *prefixCode) put(b *bitWriter, sym int) {
	if n := c.lengths[sym]; n > 0 {
		b.write(c.codes[sym], uint(n))
	} // a code of one symbol takes no bits
}

// writeSimpleCode writes a "simple" prefix code of the one symbol sym
// (< 256), which takes no bits per symbol.
func writeSimpleCode(b *bitWriter, sym int) prefixCode {
	b.write(1, 1) // simple
	b.write(0, 1) // one symbol
	if sym < 2 {
		b.write(0, 1)
		b.write(uint32(sym), 1)
	} else {
		b.write(1, 1)
		b.write(uint32(sym), 8)
	}
	return prefixCode{lengths: make([]uint8, 256), codes: make([]uint32, 256)}
}

// codeLengthOrder is the order in which the code length code's lengths
// are written.
var codeLengthOrder = [19]int{17, 18, 0, 1, 2, 3, 4, 5, 16, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}

// writePrefixCode writes the prefix code for counts (a symbol's count of
// uses) and returns it.
func writePrefixCode(b *bitWriter, counts []int) prefixCode {
	used := 0
	last := 0
	for s, c := range counts {
		if c > 0 {
			used++
			last = s
		}
	}
	if used <= 1 {
		c := writeSimpleCode(b, last)
		c.lengths = make([]uint8, len(counts))
		c.codes = make([]uint32, len(counts))
		return c
	}
	lengths := huffmanLengths(counts, 15)
	// the code length code, over the lengths 0..15 written literally
	clCounts := make([]int, 19)
	for _, l := range lengths {
		clCounts[l]++
	}
	clUsed, clLast := 0, 0
	for s, c := range clCounts {
		if c > 0 {
			clUsed++
			clLast = s
		}
	}
	var clLengths []uint8
	if clUsed == 1 { // a code needs two symbols here: add an unused one
		clLengths = make([]uint8, 19)
		other := 0
		if clLast == 0 {
			other = 1
		}
		clLengths[clLast], clLengths[other] = 1, 1
	} else {
		clLengths = huffmanLengths(clCounts, 7)
	}
	clCodes := canonical(clLengths)
	num := 4
	for i, s := range codeLengthOrder {
		if clLengths[s] > 0 {
			num = max(num, i+1)
		}
	}
	b.write(0, 1) // normal code
	b.write(uint32(num-4), 4)
	for _, s := range codeLengthOrder[:num] {
		b.write(uint32(clLengths[s]), 3)
	}
	b.write(0, 1) // every symbol's length follows
	for _, l := range lengths {
		b.write(clCodes[l], uint(clLengths[l]))
	}
	return prefixCode{lengths: lengths, codes: canonical(lengths)}
}

// canonical returns the canonical codes of lengths (as DEFLATE assigns
// them), bit-reversed for writing.
func canonical(lengths []uint8) []uint32 {
	var count [16]uint32
	for _, l := range lengths {
		if l > 0 {
			count[l]++
		}
	}
	var next [16]uint32
	code := uint32(0)
	for l := 1; l < 16; l++ {
		code = (code + count[l-1]) << 1
		next[l] = code
	}
	codes := make([]uint32, len(lengths))
	for s, l := range lengths {
		if l == 0 {
			continue
		}
		c := next[l]
		next[l]++
		var r uint32
		for range l {
			r = r<<1 | c&1
			c >>= 1
		}
		codes[s] = r
	}
	return codes
}

// huffmanLengths returns Huffman code lengths for counts (at least two of
// them nonzero), none longer than limit: when the tree is too deep, the
// counts are flattened and it is built again.
func huffmanLengths(counts []int, limit int) []uint8 {
	c := append([]int(nil), counts...)
	for {
		lengths, deepest := huffman(c)
		if deepest <= limit {
			return lengths
		}
		for i, v := range c {
			if v > 0 {
				c[i] = v/2 + 1
			}
		}
	}
}

type node struct {
	count       int
	sym         int // -1 for an inner node
	left, right *node
}

type nodeHeap []*node

func (h nodeHeap) Len() int { return len(h) }
func (h nodeHeap) Less(i, j int) bool {
	if h[i].count != h[j].count {
		return h[i].count < h[j].count
	}
	return h[i].sym < h[j].sym
}
func (h nodeHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *nodeHeap) Push(x any)   { *h = append(*h, x.(*node)) }
func (h *nodeHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// huffman returns the code lengths of a Huffman tree over counts and the
// deepest length.
func huffman(counts []int) ([]uint8, int) {
	h := &nodeHeap{}
	for s, c := range counts {
		if c > 0 {
			*h = append(*h, &node{count: c, sym: s})
		}
	}
	heap.Init(h)
	for h.Len() > 1 {
		a, b := heap.Pop(h).(*node), heap.Pop(h).(*node)
		heap.Push(h, &node{count: a.count + b.count, sym: len(counts) + min(a.sym, b.sym), left: a, right: b})
	}
	lengths := make([]uint8, len(counts))
	deepest := 0
	var walk func(n *node, d int)
	walk = func(n *node, d int) {
		if n.left == nil {
			lengths[n.sym] = uint8(min(d, 255))
			deepest = max(deepest, d)
			return
		}
		walk(n.left, d+1)
		walk(n.right, d+1)
	}
	walk(heap.Pop(h).(*node), 0)
	return lengths, deepest
}
