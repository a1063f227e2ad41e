package ort

import "testing"

func TestCheckVersion(t *testing.T) {
	for v, ok := range map[string]bool{"1.29.0": true, "1.30.0": true, "1.28.1": false, "2.0.0": false, "x": false} {
		if err := checkVersion(v); (err == nil) != ok {
			t.Errorf("checkVersion(%q) = %v, want ok=%v", v, err, ok)
		}
	}
}
