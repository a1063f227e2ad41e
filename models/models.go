package models

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/sdpipe/sdpipe/internal/cachedir"
)

//go:embed default
var embedded embed.FS

// FS returns the default model's files: model_index.json, sdpipe.json
// (its name, defaults and the prompts it knows, which sd.Open reads),
// tokenizer/, text_encoder/, unet/, vae_decoder/, vae_encoder/ and
// scheduler/ at its root. The result is read-only and safe for concurrent use.
func FS() fs.FS {
	sub, err := fs.Sub(embedded, "default")
	if err != nil {
		panic(err) // "default" is a valid path: cannot happen
	}
	return sub
}

type file struct {
	path string // slash-separated, relative to the model root
	data []byte
}

// files lists the embedded model once, sorted by path, with the hex
// SHA-256 of the whole folder (paths and contents).
var files = sync.OnceValues(func() ([]file, string) {
	var fl []file
	fsys := FS()
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		fl = append(fl, file{p, b})
		return err
	})
	if err != nil {
		panic(err) // reading an embed.FS cannot fail
	}
	slices.SortFunc(fl, func(a, b file) int { return strings.Compare(a.path, b.path) })
	h := sha256.New()
	for _, f := range fl {
		fmt.Fprintf(h, "%s\x00%d\x00", f.path, len(f.data))
		h.Write(f.data)
	}
	return fl, hex.EncodeToString(h.Sum(nil))
})

// Hash returns the hex SHA-256 of the default model's files (their paths,
// sizes and contents). Safe for concurrent use.
func Hash() string {
	_, h := files()
	return h
}

// ErrCorrupt reports a cached copy of the model whose files differ from the
// embedded ones and that could not be replaced.
var ErrCorrupt = errors.New("models: cached model differs from the embedded one")

// DefaultDir returns the path of a folder holding the default model, for
// opening it by path (sd.Open, or ONNX Runtime directly). The first
// call writes the files under <cache>/models/default-<hash prefix>, where
// <cache> is $SDPIPE_CACHE_DIR, else $XDG_CACHE_HOME/sdpipe, else
// ~/.cache/sdpipe (the root scripts/setup.sh installs ONNX Runtime under); later
// calls, and other processes, find them there after checking every file's
// content against the embedded one; a damaged copy is replaced. The folder
// is written to a temporary sibling and renamed into place, so concurrent
// callers, in this process or others, never see a partial model. The
// caller must not modify the folder. Safe for concurrent use.
func DefaultDir() (string, error) {
	return materialize(filepath.Join(cachedir.Dir(), "models"))
}

func materialize(root string) (string, error) {
	fl, hash := files()
	dir := filepath.Join(root, "default-"+hash[:16])
	err := cachedir.Build(dir, func(dir string) error { return verify(dir, fl) }, func(tmp string) error {
		for _, f := range fl {
			p := filepath.Join(tmp, filepath.FromSlash(f.path))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(p, f.data, 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("models: %w", err)
	}
	return dir, nil
}

// verify reports whether dir holds exactly the bytes of every file in fl.
func verify(dir string, fl []file) error {
	for _, f := range fl {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(f.path)))
		if err != nil {
			return err
		}
		if !bytes.Equal(b, f.data) {
			return fmt.Errorf("%w: %s", ErrCorrupt, f.path)
		}
	}
	return nil
}
