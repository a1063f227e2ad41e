package modelgen

import (
	"fmt"
	"strings"
)

// ParseAttention returns the AttentionForm named s ("efficient" or
// "baddbmm", as String writes them).
func ParseAttention(s string) (AttentionForm, error) { return parseName(s, Efficient, Baddbmm) }

// ParseLayout returns the Layout named s ("auto", "legacy" or "optimum").
func ParseLayout(s string) (Layout, error) { return parseName(s, LayoutAuto, Legacy, Optimum) }

// ParseTimestepShape returns the TimestepShape named s ("batch", "one" or
// "scalar").
func ParseTimestepShape(s string) (TimestepShape, error) {
	return parseName(s, TimestepBatch, TimestepOne, TimestepScalar)
}

// parseName returns the value of all whose String is s.
func parseName[T fmt.Stringer](s string, all ...T) (T, error) {
	names := make([]string, len(all))
	for i, v := range all {
		if v.String() == s {
			return v, nil
		}
		names[i] = v.String()
	}
	var zero T
	return zero, fmt.Errorf("%q is not %s", s, strings.Join(names, ", "))
}
