package modelgen

import "testing"

func TestParseNames(t *testing.T) {
	for _, f := range []AttentionForm{Efficient, Baddbmm} {
		if g, err := ParseAttention(f.String()); err != nil || g != f {
			t.Errorf("ParseAttention(%q) = %v, %v", f, g, err)
		}
	}
	for _, l := range []Layout{LayoutAuto, Legacy, Optimum} {
		if g, err := ParseLayout(l.String()); err != nil || g != l {
			t.Errorf("ParseLayout(%q) = %v, %v", l, g, err)
		}
	}
	for _, s := range []TimestepShape{TimestepBatch, TimestepOne, TimestepScalar} {
		if g, err := ParseTimestepShape(s.String()); err != nil || g != s {
			t.Errorf("ParseTimestepShape(%q) = %v, %v", s, g, err)
		}
	}
	if _, err := ParseLayout("flat"); err == nil || err.Error() != `"flat" is not auto, legacy, optimum` {
		t.Errorf("ParseLayout(flat): %v", err)
	}
}
