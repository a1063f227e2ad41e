package models

import (
	"encoding/json"
	"image"
	"image/color"
	"math"
	"os"
)

// The palette and shapes of training/data.py, restated here so the test
// needs no Python: a generated image is judged by the same colours and
// shape definitions the training images were drawn with.
var palette = []struct {
	name string
	rgb  [3]float64
}{
	{"red", [3]float64{220, 30, 30}},
	{"orange", [3]float64{245, 135, 20}},
	{"yellow", [3]float64{245, 225, 30}},
	{"green", [3]float64{30, 170, 50}},
	{"cyan", [3]float64{40, 210, 220}},
	{"blue", [3]float64{30, 60, 210}},
	{"purple", [3]float64{130, 40, 180}},
	{"pink", [3]float64{245, 130, 200}},
	{"white", [3]float64{245, 245, 245}},
	{"black", [3]float64{20, 20, 20}},
}

var shapeNames = []string{"circle", "square", "triangle", "diamond", "cross"}

// inside reports whether offset (dx, dy) from a shape's centre lies in the
// shape of half-extent r, as training/data.py's shape_mask draws it.
func inside(shape string, dx, dy, r float64) bool {
	switch shape {
	case "circle":
		return dx*dx+dy*dy <= r*r
	case "square":
		return math.Abs(dx) <= r && math.Abs(dy) <= r
	case "triangle":
		t := (dy + r) / (2 * r)
		return t >= 0 && t <= 1 && math.Abs(dx) <= r*t
	case "diamond":
		return math.Abs(dx)+math.Abs(dy) <= r
	case "cross":
		a := r / 3
		return (math.Abs(dx) <= a && math.Abs(dy) <= r) || (math.Abs(dy) <= a && math.Abs(dx) <= r)
	}
	panic("unknown shape " + shape)
}

// render draws a shape like the training data (4x4 supersampling, no
// jitter), for checking the classifier.
func render(shape string, fg, bg [3]float64, cx, cy, r float64) *image.NRGBA {
	const n, ss = 64, 4
	img := image.NewNRGBA(image.Rect(0, 0, n, n))
	for y := range n {
		for x := range n {
			cov := 0.0
			for sy := range ss {
				for sx := range ss {
					px := float64(x) + (float64(sx)+0.5)/ss
					py := float64(y) + (float64(sy)+0.5)/ss
					if inside(shape, px-cx, py-cy, r) {
						cov++
					}
				}
			}
			cov /= ss * ss
			var c [3]uint8
			for i := range c {
				c[i] = uint8(math.Round(cov*fg[i] + (1-cov)*bg[i]))
			}
			img.SetNRGBA(x, y, color.NRGBA{c[0], c[1], c[2], 255})
		}
	}
	return img
}

func rgbAt(img *image.NRGBA, x, y int) [3]float64 {
	c := img.NRGBAAt(x, y)
	return [3]float64{float64(c.R), float64(c.G), float64(c.B)}
}

func dist(a, b [3]float64) float64 {
	return math.Sqrt((a[0]-b[0])*(a[0]-b[0]) + (a[1]-b[1])*(a[1]-b[1]) + (a[2]-b[2])*(a[2]-b[2]))
}

func nearest(c [3]float64) int {
	best, bd := 0, math.Inf(1)
	for i, p := range palette {
		if d := dist(c, p.rgb); d < bd {
			best, bd = i, d
		}
	}
	return best
}

// verdict is what classify sees in an image; "" means nothing recognisable.
type verdict struct{ color, shape, bg string }

// classify judges a generated image: the background is the majority
// palette colour of the border pixels; the shape's colour is the majority
// palette colour of the pixels far from the background; its class is the
// shape whose ideal profile (the mask's width at eight heights and height
// at eight columns, relative to its bounding box, plus the box's fill
// ratio) is nearest.
func classify(img *image.NRGBA) verdict {
	b := img.Bounds()
	w, h := b.Dx(), b.Dy()
	votes := make([]int, len(palette))
	var border [][3]float64
	for y := range h {
		for x := range w {
			if x == 0 || y == 0 || x == w-1 || y == h-1 {
				c := rgbAt(img, x, y)
				votes[nearest(c)]++
				border = append(border, c)
			}
		}
	}
	bgi := argmax(votes)
	bgRGB := meanOf(border, func(c [3]float64) bool { return nearest(c) == bgi })
	v := verdict{bg: palette[bgi].name}

	// Foreground: far from the background (a third of the smallest gap
	// between two palette colours is about 30).
	const far = 45
	clear(votes)
	var fg [][3]float64
	for y := range h {
		for x := range w {
			c := rgbAt(img, x, y)
			if dist(c, bgRGB) > far {
				if k := nearest(c); k != bgi {
					votes[k]++
					fg = append(fg, c)
				}
			}
		}
	}
	if len(fg) < 9 {
		return v
	}
	fgi := argmax(votes)
	v.color = palette[fgi].name
	fgRGB := meanOf(fg, func(c [3]float64) bool { return nearest(c) == fgi })

	mask := make([]bool, w*h)
	x0, y0, x1, y1 := w, h, -1, -1
	for y := range h {
		for x := range w {
			c := rgbAt(img, x, y)
			if dist(c, fgRGB) < dist(c, bgRGB) {
				mask[y*w+x] = true
				x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
			}
		}
	}
	if x1-x0 < 3 || y1-y0 < 3 {
		return v
	}
	f := profile(mask, w, x0, y0, x1, y1)
	best, bd := "", math.Inf(1)
	for _, s := range shapeNames {
		if d := sqDist(f, templates[s]); d < bd {
			best, bd = s, d
		}
	}
	v.shape = best
	return v
}

const profileN = 8

// profile describes the mask inside its bounding box: the mean width of
// eight bands of rows, the mean height of eight bands of columns (both
// relative to the box) and the fill ratio, weighted double.
func profile(mask []bool, w, x0, y0, x1, y1 int) []float64 {
	bw, bh := x1-x0+1, y1-y0+1
	at := func(x, y int) float64 { return b2f(mask[y*w+x]) }
	f := make([]float64, 0, 2*profileN+1)
	band := func(n, k int) (int, int) {
		lo := k * n / profileN
		return lo, max(lo+1, (k+1)*n/profileN)
	}
	// sum counts the mask's pixels in [xa, xb) × [ya, yb): whole numbers,
	// so the order of the additions does not matter
	sum := func(xa, xb, ya, yb int) float64 {
		s := 0.0
		for y := ya; y < yb; y++ {
			for x := xa; x < xb; x++ {
				s += at(x, y)
			}
		}
		return s
	}
	for k := range profileN {
		lo, hi := band(bh, k)
		f = append(f, sum(x0, x1+1, y0+lo, y0+hi)/float64((hi-lo)*bw))
	}
	for k := range profileN {
		lo, hi := band(bw, k)
		f = append(f, sum(x0+lo, x0+hi, y0, y1+1)/float64((hi-lo)*bh))
	}
	return append(f, 2*sum(x0, x1+1, y0, y1+1)/float64(bw*bh))
}

// templates holds each shape's ideal profile, from a large clean render.
var templates = func() map[string][]float64 {
	m := map[string][]float64{}
	for _, s := range shapeNames {
		img := render(s, [3]float64{255, 255, 255}, [3]float64{0, 0, 0}, 32, 32, 26)
		mask := make([]bool, 64*64)
		x0, y0, x1, y1 := 64, 64, -1, -1
		for y := range 64 {
			for x := range 64 {
				if img.NRGBAAt(x, y).R >= 128 {
					mask[y*64+x] = true
					x0, y0, x1, y1 = min(x0, x), min(y0, y), max(x1, x), max(y1, y)
				}
			}
		}
		m[s] = profile(mask, 64, x0, y0, x1, y1)
	}
	return m
}()

func sqDist(a, b []float64) float64 {
	s := 0.0
	for i := range a {
		s += (a[i] - b[i]) * (a[i] - b[i])
	}
	return s
}

func argmax(v []int) int {
	best := 0
	for i := range v {
		if v[i] > v[best] {
			best = i
		}
	}
	return best
}

func meanOf(cs [][3]float64, keep func([3]float64) bool) [3]float64 {
	var s [3]float64
	n := 0.0
	for _, c := range cs {
		if keep(c) {
			for i := range s {
				s[i] += c[i]
			}
			n++
		}
	}
	for i := range s {
		s[i] /= max(n, 1)
	}
	return s
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, v)
}
