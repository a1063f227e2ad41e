package sd

import (
	"image"
	"math"
)

// gaussianBlur blurs m in place as OpenCV's GaussianBlur with σ sigma and
// A1111's kernel size 2·int(2.5σ+0.5)+1, reflecting at the borders
// (BORDER_REFLECT_101), rounding to 8 bits once at the end.
func gaussianBlur(m *image.Gray, sigma float64) {
	r := int(2.5*sigma + 0.5)
	k := make([]float64, 2*r+1)
	var sum float64
	for i := range k {
		d := float64(i - r)
		k[i] = math.Exp(-d * d / (2 * sigma * sigma))
		sum += k[i]
	}
	for i := range k {
		k[i] /= sum
	}
	w, h := m.Rect.Dx(), m.Rect.Dy()
	src := make([]float64, w*h)
	for y := range h {
		for x := range w {
			src[y*w+x] = float64(m.Pix[y*m.Stride+x])
		}
	}
	tmp := make([]float64, w*h)
	convolve(tmp, src, w, h, k, 1, w) // along x
	convolve(src, tmp, w, h, k, w, h) // along y
	for y := range h {
		for x := range w {
			m.Pix[y*m.Stride+x] = uint8(min(max(math.Round(src[y*w+x]), 0), 255))
		}
	}
}

// convolve runs kernel k along one axis: step is the stride between
// neighbours, n the axis length.
func convolve(dst, src []float64, w, h int, k []float64, step, n int) {
	r := len(k) / 2
	for y := range h {
		for x := range w {
			pos := x
			if step != 1 {
				pos = y
			}
			base := y*w + x - pos*step
			var s float64
			for i, kv := range k {
				s += kv * src[base+reflect101(pos+i-r, n)*step]
			}
			dst[y*w+x] = s
		}
	}
}

// reflect101 maps i into [0, n) reflecting without repeating the edge.
func reflect101(i, n int) int {
	if n == 1 {
		return 0
	}
	for i < 0 || i >= n {
		if i < 0 {
			i = -i
		}
		if i >= n {
			i = 2*(n-1) - i
		}
	}
	return i
}

// fillColors is A1111's masking.fill: the kept pixels (alpha 255 − mask),
// blurred with radii 256, 64, 16, 4, 2 and 0 and composited over each
// other, so the masked region takes the colours around it. PIL's
// Gaussian blurs are approximated with three box blurs each.
func fillColors(img *image.NRGBA, mask *image.Gray) *image.NRGBA {
	w, h := img.Rect.Dx(), img.Rect.Dy()
	// premultiplied RGBA of the kept pixels
	pm := make([]float64, 4*w*h)
	for y := range h {
		for x := range w {
			a := float64(255-mask.Pix[y*mask.Stride+x]) / 255
			p := img.Pix[y*img.Stride+x*4:]
			i := (y*w + x) * 4
			pm[i], pm[i+1], pm[i+2], pm[i+3] = float64(p[0])*a, float64(p[1])*a, float64(p[2])*a, a
		}
	}
	out := make([]float64, 4*w*h) // straight RGB + alpha, starts transparent
	for _, rr := range []struct{ radius, repeats int }{{256, 1}, {64, 1}, {16, 2}, {4, 4}, {2, 2}, {0, 1}} {
		b := append([]float64(nil), pm...)
		if rr.radius > 0 {
			boxBlur3(b, w, h, float64(rr.radius))
		}
		for range rr.repeats {
			for i := 0; i < len(out); i += 4 {
				sa := b[i+3]
				if sa <= 0 {
					continue
				}
				da := out[i+3]
				oa := sa + da*(1-sa)
				for c := range 3 {
					sc := b[i+c] / sa // straight colour of the blur
					out[i+c] = (sc*sa + out[i+c]*da*(1-sa)) / oa
				}
				out[i+3] = oa
			}
		}
	}
	res := image.NewNRGBA(img.Rect)
	for y := range h {
		for x := range w {
			i := (y*w + x) * 4
			p := res.Pix[y*res.Stride+x*4:]
			for c := range 3 {
				p[c] = uint8(min(max(math.Round(out[i+c]), 0), 255))
			}
			p[3] = 255
		}
	}
	return res
}

// boxBlur3 approximates a Gaussian of σ sigma on interleaved 4-channel
// data with three box blurs per axis (clamped edges).
func boxBlur3(d []float64, w, h int, sigma float64) {
	r := int(math.Sqrt(12*sigma*sigma/3+1)-1) / 2
	r = max(r, 1)
	tmp := make([]float64, len(d))
	for range 3 {
		boxPass(tmp, d, w, h, r, true)
		boxPass(d, tmp, w, h, r, false)
	}
}

// boxPass averages over 2r+1 neighbours along x (or y), edges clamped,
// with a running sum.
func boxPass(dst, src []float64, w, h, r int, alongX bool) {
	n, lines := w, h
	if !alongX {
		n, lines = h, w
	}
	at := func(line, i, c int) int {
		if alongX {
			return (line*w+i)*4 + c
		}
		return (i*w+line)*4 + c
	}
	inv := 1 / float64(2*r+1)
	for line := range lines {
		for c := range 4 {
			var s float64
			for i := -r; i <= r; i++ {
				s += src[at(line, min(max(i, 0), n-1), c)]
			}
			for i := range n {
				dst[at(line, i, c)] = s * inv
				s += src[at(line, min(i+r+1, n-1), c)] - src[at(line, max(i-r, 0), c)]
			}
		}
	}
}
