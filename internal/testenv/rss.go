package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// ResetPeakRSS resets the process's peak RSS (VmHWM) to its current RSS,
// skipping the test where Linux's /proc/self/clear_refs is missing.
func ResetPeakRSS(t testing.TB) {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("resetting the peak RSS needs Linux's /proc/self/clear_refs: %v", err)
	}
}

// RSS returns a field of /proc/self/status measured in kB (VmRSS, VmHWM)
// in bytes.
func RSS(t testing.TB, name string) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", name)
	return 0
}
