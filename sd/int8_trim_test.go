package sd

import (
	"os"
	"runtime"
	"strings"
	"testing"
)

// TestTrimHeap checks that the heap trim after loading finds glibc's
// malloc_trim in a process linked with glibc (whose libc.so.6 is mapped).
func TestTrimHeap(t *testing.T) {
	maps, err := os.ReadFile("/proc/self/maps")
	if runtime.GOOS != "linux" || err != nil || !strings.Contains(string(maps), "/libc.so.6") {
		t.Skip("no glibc in this process: trimHeap leaves the heap alone")
	}
	if !trimHeap() {
		t.Error("trimHeap did not find malloc_trim in a glibc process")
	}
}
