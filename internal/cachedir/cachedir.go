// Package cachedir names the per-user folder where the project keeps what
// it installs or derives (ONNX Runtime, generated and embedded models,
// rewritten graphs), and builds folders into it atomically. It imports
// nothing of the project, so that both internal/ort and the
// dependency-free package models share one rule.
package cachedir

import (
	"errors"
	"fmt"
	"io/fs"
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

// Build makes dir, a folder of the cache, atomically, and returns nil when
// dir holds a valid folder. When valid(dir) is nil at once, dir is kept as
// it is. Otherwise fill writes the folder into a temporary sibling, which
// is renamed into place, so that a reader (in this process or another)
// never sees a partial folder; when another builder's folder got there
// first, it is kept if valid. An invalid folder already in place (a
// damaged copy) is moved aside and replaced once; the error of a second
// failure wraps the last error from the rename or from valid.
func Build(dir string, valid func(dir string) error, fill func(tmp string) error) error {
	if valid(dir) == nil {
		return nil
	}
	parent, base := filepath.Split(filepath.Clean(dir))
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(parent, "."+base+".tmp-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	if err := fill(tmp); err != nil {
		return err
	}
	if err := valid(tmp); err != nil {
		return fmt.Errorf("cachedir: the folder built for %s is not valid: %w", dir, err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil { // MkdirTemp makes it 0700
		return err
	}
	for attempt := 0; ; attempt++ {
		rerr := os.Rename(tmp, dir)
		if rerr == nil {
			return nil
		}
		verr := valid(dir)
		if verr == nil {
			return nil // another builder won the race
		}
		if attempt == 1 {
			return fmt.Errorf("cachedir: %s: %w", dir, errors.Join(rerr, verr))
		}
		// a damaged folder: move it aside (atomically), then remove it
		old, err := os.MkdirTemp(parent, ".stale-")
		if err != nil {
			return err
		}
		err = os.Rename(dir, filepath.Join(old, "d"))
		os.RemoveAll(old)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("cachedir: %s: %w", dir, errors.Join(verr, err))
		}
	}
}
