package ort

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	onnx "github.com/yalue/onnxruntime_go"

	"github.com/sdpipe/sdpipe/internal/cachedir"
)

// PinnedVersion is the ONNX Runtime release that scripts/setup.sh installs.
const PinnedVersion = "1.29.0"

// minMinor is the oldest 1.x release whose C API onnxruntime_go v1.36.0 needs
// (API version 29).
const minMinor = 29

// LibraryEnv is the environment variable that names the ONNX Runtime shared
// library, consulted after an explicit path.
const LibraryEnv = "ONNXRUNTIME_SHARED_LIBRARY_PATH"

// SetupCommand is what installs the library on a fresh machine.
const SetupCommand = "scripts/setup.sh"

// ErrLibraryNotFound reports that no usable ONNX Runtime library was found.
var ErrLibraryNotFound = errors.New("ort: onnxruntime shared library not found")

// LibraryError lists every place that was tried for the shared library and
// why each failed. It unwraps to ErrLibraryNotFound.
type LibraryError struct {
	Tried []string // "path: reason", in the order tried
}

func (e *LibraryError) Error() string {
	return fmt.Sprintf("ort: onnxruntime shared library not found; tried:\n  %s\ninstall it with %s, or set %s",
		strings.Join(e.Tried, "\n  "), SetupCommand, LibraryEnv)
}

// Unwrap returns ErrLibraryNotFound.
func (e *LibraryError) Unwrap() error { return ErrLibraryNotFound }

// CachedLibraryPath is where scripts/setup.sh puts the pinned library.
func CachedLibraryPath() string {
	return filepath.Join(cachedir.Dir(), "onnxruntime", PinnedVersion, "libonnxruntime.so.1")
}

// candidates returns the library paths to try, in order: the explicit path,
// the environment variable, the setup cache, then the system's.
func candidates(explicit string) []string {
	var c []string
	if explicit != "" {
		return []string{explicit} // an explicit choice is never overridden
	}
	if p := os.Getenv(LibraryEnv); p != "" {
		c = append(c, p)
	}
	c = append(c, CachedLibraryPath())
	for _, d := range []string{"/usr/local/lib", "/usr/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib64"} {
		c = append(c, filepath.Join(d, "libonnxruntime.so.1"), filepath.Join(d, "libonnxruntime.so"))
	}
	return c
}

// env is the process-wide ORT environment, shared by every session.
var env struct {
	mu      sync.Mutex
	refs    int
	owned   bool   // we created it, so we destroy it at refs == 0
	path    string // library in use
	version string
}

// acquire takes a reference on the process-wide environment, creating it on
// first use from the first library candidate that loads.
func acquire(explicit string) error {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.refs > 0 || onnx.IsInitialized() {
		if env.refs == 0 { // created by someone else: use it, never destroy it
			env.owned = false
			env.version = onnx.GetVersion()
		}
		if explicit != "" && env.path != "" && explicit != env.path {
			return fmt.Errorf("ort: library %s requested, but %s is already loaded in this process", explicit, env.path)
		}
		env.refs++
		return nil
	}
	var tried []string
	for _, p := range candidates(explicit) {
		if _, err := os.Stat(p); err != nil {
			tried = append(tried, p+": "+errReason(err))
			continue
		}
		onnx.SetSharedLibraryPath(p)
		if err := onnx.InitializeEnvironment(onnx.WithLogLevelError()); err != nil {
			tried = append(tried, p+": "+err.Error())
			continue
		}
		v := onnx.GetVersion()
		if err := checkVersion(v); err != nil {
			_ = onnx.DestroyEnvironment()
			tried = append(tried, p+": "+err.Error())
			continue
		}
		env.refs, env.owned, env.path, env.version = 1, true, p, v
		return nil
	}
	return &LibraryError{Tried: tried}
}

func errReason(err error) string {
	if errors.Is(err, os.ErrNotExist) {
		return "no such file"
	}
	return err.Error()
}

// release drops a reference taken by acquire.
func release() error {
	env.mu.Lock()
	defer env.mu.Unlock()
	if env.refs == 0 {
		return nil
	}
	env.refs--
	if env.refs > 0 || !env.owned {
		return nil
	}
	env.owned, env.path = false, ""
	if err := onnx.DestroyEnvironment(); err != nil {
		return fmt.Errorf("ort: destroy environment: %w", err)
	}
	return nil
}

// checkVersion accepts ONNX Runtime 1.x with x >= minMinor.
func checkVersion(v string) error {
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return fmt.Errorf("unrecognised onnxruntime version %q", v)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major != 1 || minor < minMinor {
		return fmt.Errorf("onnxruntime %s is too old or unknown: need 1.%d or newer (pinned %s)", v, minMinor, PinnedVersion)
	}
	return nil
}

// Version loads the library (as Open would) and reports its version and
// path. It is safe for concurrent use.
func Version(libraryPath string) (version, path string, err error) {
	if err := acquire(libraryPath); err != nil {
		return "", "", err
	}
	env.mu.Lock()
	version, path = env.version, env.path
	env.mu.Unlock()
	return version, path, release()
}
