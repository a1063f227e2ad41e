package modellib

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// WalkVisible walks the tree at dir as filepath.WalkDir does, passing over
// every file and folder whose name starts with "." (below dir itself): the
// model folders' hidden files (.cache, .DS_Store, a download's .git) are
// never models and never part of one. fn sees only visible entries and no
// walk errors: those end the walk and are returned.
func WalkVisible(dir string, fn func(path string, d fs.DirEntry) error) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		return fn(p, d)
	})
}

// cacheFrom is the size from which Folder keeps a file's SHA-256 in the
// cache: model weights, which take seconds to hash. Smaller files are
// hashed each time, so that the cache holds no entry per config file.
const cacheFrom = 64 << 20

// Folder returns the content hash of a model folder: the hex SHA-256 of
// the sha256sum-style listing of its files,
//
//	<hex SHA-256 of the file>  <path relative to dir, slash-separated>\n
//
// one line per regular file in byte order of the path, skipping names
// that start with "." at any depth, so that the same files give the same
// hash wherever the folder lies. The shell equivalent is
//
//	(cd DIR && find . -type f -not -path '*/.*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
//
// A linked folder is hashed as its target. Files of 64 MiB and more are
// hashed once per path, size and modification time (the cache); a folder
// without files is an error.
func (h *Hashes) Folder(dir string) (string, error) {
	root, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", fmt.Errorf("modellib: hashing %s: %w", dir, err)
	}
	type file struct{ rel, sum string }
	var files []file
	err = WalkVisible(root, func(p string, d fs.DirEntry) error {
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var sum string
		if info.Size() >= h.cacheFrom {
			sum, err = h.SHA256(p)
		} else {
			sum, err = hashFile(p, false)
		}
		if err != nil {
			return err
		}
		files = append(files, file{filepath.ToSlash(rel), sum})
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("modellib: hashing %s: %w", dir, err)
	}
	if len(files) == 0 {
		return "", fmt.Errorf("modellib: hashing %s: no files", dir)
	}
	slices.SortFunc(files, func(a, b file) int { return strings.Compare(a.rel, b.rel) })
	sum := sha256.New()
	for _, f := range files {
		fmt.Fprintf(sum, "%s  %s\n", f.sum, f.rel)
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// Model returns the hash that stands for a model: a single file's
// SHA-256 (SHA256), a folder's content hash (Folder).
func (h *Hashes) Model(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("modellib: %w", err)
	}
	if st.IsDir() {
		return h.Folder(path)
	}
	return h.SHA256(path)
}

// Models returns the models under dir, sorted by path: checkpoint files
// (Checkpoint's extensions, a linked file too) named by their path without
// extension, and model folders (a folder holding model_index.json, a
// linked one too) named by their path, whose Size is the bytes of their
// files and ModTime the latest among them. A model folder's own files are
// not models; hidden names are passed over.
func Models(dir string) ([]Entry, error) {
	var out []Entry
	err := WalkVisible(dir, func(p string, d fs.DirEntry) error {
		if p == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		link := d.Type()&fs.ModeSymlink != 0
		if !d.IsDir() && !link && !slices.Contains(Checkpoint.exts(), strings.ToLower(filepath.Ext(p))) {
			return nil // the common case, settled without a stat
		}
		info, err := os.Stat(p) // a link's target
		if err != nil {
			if link {
				return nil // a dangling link
			}
			return err
		}
		if info.IsDir() {
			if _, err := os.Stat(filepath.Join(p, "model_index.json")); err != nil {
				return nil
			}
			size, mod, err := folderSize(p)
			if err != nil {
				return err
			}
			out = append(out, Entry{Name: rel, Path: p, Size: size, ModTime: mod})
			if link {
				return nil // SkipDir on a link would skip the rest of its parent
			}
			return filepath.SkipDir
		}
		if !info.Mode().IsRegular() || !slices.Contains(Checkpoint.exts(), strings.ToLower(filepath.Ext(p))) {
			return nil
		}
		out = append(out, Entry{Name: strings.TrimSuffix(rel, filepath.Ext(rel)), Path: p, Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modellib: listing models: %w", err)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Path, b.Path) })
	return out, nil
}

// folderSize returns the bytes of a folder's files and the latest
// modification time among them.
func folderSize(dir string) (int64, time.Time, error) {
	var n int64
	var mod time.Time
	dir, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return 0, mod, err
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := os.Stat(p)
		if err != nil {
			return err
		}
		n += info.Size()
		if info.ModTime().After(mod) {
			mod = info.ModTime()
		}
		return nil
	})
	return n, mod, err
}
