package main

import (
	"bufio"
	"os"
	"strconv"
	"strings"
)

// procStatus returns a field of /proc/self/status in bytes ("VmHWM",
// "VmRSS"), or 0 where there is none (not Linux).
func procStatus(field string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || k != field {
			continue
		}
		fs := strings.Fields(v)
		if len(fs) == 0 {
			return 0
		}
		n, err := strconv.ParseInt(fs[0], 10, 64)
		if err != nil {
			return 0
		}
		return n << 10 // kB
	}
	return 0
}

// resetPeakRSS resets VmHWM to the current RSS (Linux 4.0+), so that the
// next peak read covers one mode only. It reports whether it worked.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}
