package testenv

import "math"

// SeamDiff returns the max and mean absolute difference of a and b
// [planes, h, w] inside the tiles and on the seams, the rows and columns
// of a blended overlap of a tiled VAE (starts every stride, blend wide,
// past the first).
func SeamDiff(a, b []float32, planes, h, w, stride, blend int) (interiorMax, interiorMean, seamMax, seamMean float64) {
	seam := func(v int) bool { return v >= stride && v%stride < blend }
	var ni, ns int
	for p := range planes {
		for y := range h {
			for x := range w {
				d := math.Abs(float64(a[(p*h+y)*w+x] - b[(p*h+y)*w+x]))
				if seam(y) || seam(x) {
					seamMax, seamMean, ns = max(seamMax, d), seamMean+d, ns+1
				} else {
					interiorMax, interiorMean, ni = max(interiorMax, d), interiorMean+d, ni+1
				}
			}
		}
	}
	return interiorMax, interiorMean / float64(max(ni, 1)), seamMax, seamMean / float64(max(ns, 1))
}
