package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Errors for a WebGPU device that cannot be used. They are wrapped in the
// *ProviderError that Open returns.
var (
	// ErrNoVulkanLoader: the Vulkan loader library (libvulkan.so.1) is not
	// installed, so WebGPU (Dawn over Vulkan) has nothing to run on.
	ErrNoVulkanLoader = errors.New("ort: no Vulkan loader (libvulkan.so.1); install Debian's libvulkan1")
	// ErrNoAdapter: the loader found no usable Vulkan driver.
	ErrNoAdapter = errors.New("ort: no WebGPU adapter: no usable Vulkan driver (an NVIDIA/AMD/Intel GPU driver, " +
		"or the software SwiftShader from Debian's chromium package: VK_ICD_FILENAMES=" + SwiftShaderICD + ")")
	// ErrRejected: the provider could not take the model (an operator or
	// type it does not support).
	ErrRejected = errors.New("ort: the WebGPU provider rejected the model")
)

// SwiftShaderICD is where Debian's chromium package puts SwiftShader's
// Vulkan driver manifest.
const SwiftShaderICD = "/usr/lib/chromium/vk_swiftshader_icd.json"

// VulkanLoader returns the path of the Vulkan loader library, or "" when
// none is found in $LD_LIBRARY_PATH or the system library folders.
func VulkanLoader() string {
	dirs := filepath.SplitList(os.Getenv("LD_LIBRARY_PATH"))
	dirs = append(dirs, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/usr/local/lib", "/usr/lib", "/lib", "/usr/lib64", "/lib64")
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, "libvulkan.so.1")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// classifyWebGPU turns the provider's failure into one of the errors above,
// keeping ORT's message.
func classifyWebGPU(err error) error {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "requires f16"):
		return fmt.Errorf("%w: the device has no float16 shader support (use a float32 model, or a GPU with shader-f16): %v", ErrRejected, err)
	case strings.Contains(msg, "adapter") || strings.Contains(msg, "Adapter"):
		if VulkanLoader() == "" {
			return fmt.Errorf("%w: %v", ErrNoVulkanLoader, err)
		}
		return fmt.Errorf("%w: %v", ErrNoAdapter, err)
	case strings.Contains(msg, "not supported") || strings.Contains(msg, "NOT_IMPLEMENTED") || strings.Contains(msg, "Could not find an implementation"):
		return fmt.Errorf("%w: %v", ErrRejected, err)
	}
	return err
}

// webgpuOpen serialises the creation of WebGPU sessions.
var webgpuOpen sync.Mutex

// webgpuRun serialises the calls of WebGPU sessions: ORT 1.29's provider
// keeps one device context, with one command encoder, for all of them, and
// calls from two goroutines at once failed ("Command encoding already
// finished") or crashed the process (TestWebGPUSessionsConcurrent). The GPU
// runs one call at a time anyway; what overlaps a GPU call is the CPU
// sessions' work. One lock is all there is to have: ORT's "deviceId" is a
// WebGPU context id, and a context other than 0 must be given its own
// native WebGPU instance and device (ORT refuses it otherwise: "custom
// context (contextId>0) must have custom WebGPU instance and device"),
// which a Go program does not hold; every session here is on context 0.
var webgpuRun sync.Mutex
