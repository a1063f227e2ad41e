// Package cachedir names the per-user folder where the project keeps what
// it installs or derives (ONNX Runtime, generated and embedded models,
// rewritten graphs). It imports nothing of the project, so that both
// internal/ort and the dependency-free package models share one rule.
package cachedir

import (
	"os"
	"path/filepath"
)

// Env names the environment variable that overrides the cache root.
const Env = "SDPIPE_CACHE_DIR"

// Dir returns $SDPIPE_CACHE_DIR, else $XDG_CACHE_HOME/sdpipe, else
// ~/.cache/sdpipe (the root scripts/setup.sh installs ONNX Runtime under),
// else a folder in the system's temporary directory.
func Dir() string {
	if d := os.Getenv(Env); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "sdpipe")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "sdpipe")
	}
	return filepath.Join(os.TempDir(), "sdpipe-cache")
}
