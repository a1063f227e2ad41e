package rewrite

import "math"

var inf = math.Inf(1)

func sqrt(x float64) float64 { return math.Sqrt(x) }

// Diff returns the differences of b from the reference a: the largest
// absolute one and the root mean square over a's root mean square. A
// length mismatch or NaN gives +Inf for both.
func Diff(a, b []float32) Errors {
	if len(a) != len(b) {
		return Errors{MaxAbs: inf, RelRMS: inf}
	}
	var e Errors
	var num, den float64
	for i := range a {
		x := float64(a[i]) - float64(b[i])
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return Errors{MaxAbs: inf, RelRMS: inf}
		}
		e.MaxAbs = max(e.MaxAbs, math.Abs(x))
		num += x * x
		den += float64(a[i]) * float64(a[i])
	}
	switch {
	case den > 0:
		e.RelRMS = math.Sqrt(num / den)
	case num > 0:
		e.RelRMS = inf
	}
	return e
}
