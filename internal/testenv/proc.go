package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// ProcStatus returns a memory field of /proc/self/status ("VmRSS",
// "VmHWM") in bytes; it fails the test where there is none (not Linux).
func ProcStatus(t testing.TB, field string) float64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for l := range strings.Lines(string(b)) {
		if f, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(f), " kB"), 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb * 1024
		}
	}
	t.Fatalf("/proc/self/status has no %s", field)
	return 0
}
