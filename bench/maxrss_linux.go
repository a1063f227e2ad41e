//go:build linux

package main

import (
	"os"
	"syscall"
)

// maxRSS returns a finished child's peak resident set in bytes (Linux
// reports ru_maxrss in KiB), or 0 where it is not known.
func maxRSS(ps *os.ProcessState) int64 {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss << 10
	}
	return 0
}
