//go:build linux && cgo

package sd

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>

typedef int (*trim_fn)(size_t);
typedef int (*opt_fn)(int, int);

static int sdpipe_malloc_trim(void) {
	trim_fn f = (trim_fn)dlsym(RTLD_DEFAULT, "malloc_trim");
	if (f == NULL) {
		return -1;
	}
	return f(0);
}

// glibc's M_MMAP_THRESHOLD
#define SDPIPE_M_MMAP_THRESHOLD (-3)

static int sdpipe_mmap_threshold(int n) {
	opt_fn f = (opt_fn)dlsym(RTLD_DEFAULT, "mallopt");
	if (f == NULL) {
		return -1;
	}
	return f(SDPIPE_M_MMAP_THRESHOLD, n);
}
*/
import "C"

import (
	"os"
	"sync"
)

// The C heap's memory. ONNX Runtime allocates its tensors and weights
// with malloc; glibc serves a block below its mmap threshold from its
// heap and keeps the pages of freed blocks there, and it raises the
// threshold (up to 32 MiB) each time a mapped block is freed. So what a
// session frees (the weights a model file embeds, read and then replaced
// by the copies its layout optimisations make; the VAE's tensors, which
// come from malloc, the VAE running without ONNX Runtime's arena) mostly
// stays resident and is counted again at the next peak. Measured on the
// SD 1.5 VAE decoder (189 MiB of weights inside model.onnx): 419 MiB
// resident after its session was created, 229 MiB after malloc_trim; a
// 256² decode peaked 521 MiB above the open and kept 330 MiB of it,
// against 194 MiB and 4 MiB with the threshold fixed at 1 MiB
// (BENCHMARKS.md, int8 UNet).

// mmapThreshold is the fixed threshold set at the first open: blocks of
// at least 1 MiB are mapped and go back to the system when freed.
const mmapThreshold = 1 << 20

var heapOnce sync.Once

// tuneHeap fixes glibc's mmap threshold at mmapThreshold, once, unless
// the user set one (MALLOC_MMAP_THRESHOLD_); it is looked up at run time,
// so that a C library without mallopt (musl) is left alone.
func tuneHeap() {
	heapOnce.Do(func() {
		if _, ok := os.LookupEnv("MALLOC_MMAP_THRESHOLD_"); !ok {
			C.sdpipe_mmap_threshold(mmapThreshold)
		}
	})
}

// trimHeap hands the C heap's free pages back to the system (glibc's
// malloc_trim, looked up at run time) and reports whether it ran.
func trimHeap() bool { return C.sdpipe_malloc_trim() >= 0 }
