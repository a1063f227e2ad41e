package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ErrLocked is matched by the error of Run when another run holds the
// output folder's manifest for the same shard.
var ErrLocked = errors.New("grid: the output is in use by another run")

// lockManifest takes the lock of a shard's manifest (manifest + ".lock"),
// held until unlock or the process ends: a second run of the same shard
// on the same folder is refused instead of interleaving its appends and
// removing the first one's temporary files. Runs of other shards, which
// write their own manifests and files, go on beside it.
func lockManifest(manifest string) (unlock func() error, err error) {
	path := manifest + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("grid: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			who := strings.TrimSpace(string(b))
			if who == "" {
				who = "?"
			}
			return nil, fmt.Errorf("%w: %s is locked by process %s; wait for it to finish, or write to another -out", ErrLocked, filepath.Base(manifest), who)
		}
		return nil, fmt.Errorf("grid: lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f.Close, nil // closing the file releases the lock
}

// cleanTemps removes the temporary files that a killed run of the shard
// left beside its images (writeFileAtomic's .tmp-<name>-*). Only this
// shard's items are touched: another shard may be writing beside it.
func cleanTemps(out string, items []Item) (removed int) {
	for _, it := range items {
		p := filepath.Join(out, filepath.FromSlash(it.File))
		olds, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".tmp-"+globEscape(filepath.Base(p))+"-*"))
		for _, o := range olds {
			if os.Remove(o) == nil {
				removed++
			}
		}
	}
	return removed
}

func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`).Replace(s)
}

// isNoSpace reports whether err is the file system being full, after
// which no image can be written: the run stops instead of failing every
// image left.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}
