//go:build linux && cgo

package sd

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>

typedef int (*trim_fn)(size_t);

static int sdpipe_malloc_trim(void) {
	trim_fn f = (trim_fn)dlsym(RTLD_DEFAULT, "malloc_trim");
	if (f == NULL) {
		return -1;
	}
	return f(0);
}

*/
import "C"

// The C heap's memory. ONNX Runtime allocates its tensors and weights
// with malloc; glibc keeps the pages of freed blocks below its mmap
// threshold in its heap. So what a session frees while it is created (the
// weights a model file embeds, read and then replaced by the copies its
// layout optimisations make) stays resident and is counted again at the
// next peak. Measured on the SD 1.5 VAE decoder (189 MiB of weights inside
// model.onnx): 419 MiB resident after its session was created, 229 MiB
// after malloc_trim (BENCHMARKS.md, int8 UNet). The open trims once, when
// the components are loaded.
//
// Fixing glibc's mmap threshold low (1 MiB) also returns what each VAE
// decode frees (an int8 512² image peaked at 2.53 GiB with it; see
// BENCHMARKS.md), but it is a setting of the whole process, and its cost
// was not shown to be small: 512² decodes of the SD 1.5 VAE, alternating
// processes, took 39.4 and 19.4 s with it against 19.1 and 18.4 s
// without, on a machine other work shared. So the library leaves the
// process's allocator alone; a program that wants the lower peak sets
// MALLOC_MMAP_THRESHOLD_=1048576 in its environment (glibc reads it at
// start).

// trimHeap hands the C heap's free pages back to the system (glibc's
// malloc_trim, looked up at run time, so that a C library without it
// (musl) is left alone) and reports whether it ran.
func trimHeap() bool { return C.sdpipe_malloc_trim() >= 0 }
