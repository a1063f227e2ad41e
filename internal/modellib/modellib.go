// Package modellib lists the model files a service offers, as
// AUTOMATIC1111 does: checkpoints, LoRAs and textual-inversion embeddings
// in folders, named by their path without extension, with A1111's hashes
// (the "Model hash", "Lora hashes" and "TI hashes" of PNG infotext, which
// A1111's PNG-info reader matches), computed once and kept in a hash cache
// keyed by path, size and modification time.
//
// A1111's hashes: a checkpoint's (and an embedding's) is the SHA-256 of the
// whole file, shown as its first 10 (checkpoints) or 12 (embeddings) hex
// digits; a LoRA's is the "addnet" hash of a .safetensors file, the SHA-256
// of its data section (everything after the 8-byte length and the JSON
// header, which kohya also writes as sshs_model_hash), or the whole file's
// for other formats, shown as its first 12 hex digits.
//
// All functions are safe for concurrent use, across processes too (the
// cache file is replaced atomically).
package modellib

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Kind is a kind of model file.
type Kind int

// Kinds of model files.
const (
	Checkpoint Kind = iota // .safetensors, .ckpt
	LoRA                   // .safetensors, .pt, .ckpt
	Embedding              // .safetensors, .pt, .bin
)

func (k Kind) exts() []string {
	switch k {
	case LoRA:
		return []string{".safetensors", ".pt", ".ckpt"}
	case Embedding:
		return []string{".safetensors", ".pt", ".bin"}
	}
	return []string{".safetensors", ".ckpt"}
}

// Entry is one model file of a folder.
type Entry struct {
	// Name is the path relative to the folder, without extension and with
	// '/' separators (A1111's model_name; LoRA and embedding names are the
	// base name).
	Name    string
	Path    string
	Size    int64
	ModTime time.Time
}

// List returns the files of kind k under dir (sub-folders included),
// sorted by Name. Hidden files and folders are skipped.
func List(dir string, k Kind) ([]Entry, error) {
	var out []Entry
	err := WalkVisible(dir, func(p string, d fs.DirEntry) error {
		if d.IsDir() || !slices.Contains(k.exts(), strings.ToLower(filepath.Ext(p))) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		name := strings.TrimSuffix(filepath.ToSlash(rel), filepath.Ext(rel))
		if k != Checkpoint {
			name = filepath.Base(name)
		}
		out = append(out, Entry{Name: name, Path: p, Size: info.Size(), ModTime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modellib: %w", err)
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Hashes computes A1111's hashes and keeps them in a JSON file.
type Hashes struct {
	path      string
	cacheFrom int64 // Folder's cacheFrom; tests lower it

	mu    sync.Mutex
	cache map[string]cached
}

type cached struct {
	Size    int64  `json:"size"`
	ModTime int64  `json:"mtime_ns"`
	SHA256  string `json:"sha256,omitempty"`
	AddNet  string `json:"addnet,omitempty"`
}

// NewHashes returns a hash computer whose cache lives in file path ("" for
// memory only). A missing or unreadable cache starts empty.
func NewHashes(path string) *Hashes {
	h := &Hashes{path: path, cacheFrom: cacheFrom, cache: map[string]cached{}}
	if path != "" {
		if b, err := os.ReadFile(path); err == nil {
			_ = json.Unmarshal(b, &h.cache) // a broken cache is recomputed
		}
	}
	return h
}

// SHA256 returns the hex SHA-256 of the whole file.
func (h *Hashes) SHA256(path string) (string, error) {
	return h.get(path, false)
}

// AddNet returns the hex SHA-256 of a safetensors file's data section.
func (h *Hashes) AddNet(path string) (string, error) {
	return h.get(path, true)
}

// ModelHash returns A1111's "Model hash" of a checkpoint: the first 10 hex
// digits of its SHA-256.
func (h *Hashes) ModelHash(path string) (string, error) {
	s, err := h.SHA256(path)
	if err != nil {
		return "", err
	}
	return s[:10], nil
}

// LoRAHash returns A1111's short LoRA hash (for "Lora hashes"): the first
// 12 hex digits of the addnet hash for .safetensors, of the SHA-256 for
// other files.
func (h *Hashes) LoRAHash(path string) (string, error) {
	var s string
	var err error
	if strings.EqualFold(filepath.Ext(path), ".safetensors") {
		s, err = h.AddNet(path)
	} else {
		s, err = h.SHA256(path)
	}
	if err != nil {
		return "", err
	}
	return s[:12], nil
}

// EmbeddingHash returns A1111's short embedding hash (for "TI hashes"):
// the first 12 hex digits of the file's SHA-256.
func (h *Hashes) EmbeddingHash(path string) (string, error) {
	s, err := h.SHA256(path)
	if err != nil {
		return "", err
	}
	return s[:12], nil
}

func (h *Hashes) get(path string, addnet bool) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("modellib: %w", err)
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("modellib: %w", err)
	}
	h.mu.Lock()
	c, ok := h.cache[abs]
	h.mu.Unlock()
	if ok && c.Size == st.Size() && c.ModTime == st.ModTime().UnixNano() {
		if addnet && c.AddNet != "" {
			return c.AddNet, nil
		}
		if !addnet && c.SHA256 != "" {
			return c.SHA256, nil
		}
	} else {
		c = cached{Size: st.Size(), ModTime: st.ModTime().UnixNano()}
	}
	s, err := hashFile(abs, addnet)
	if err != nil {
		return "", err
	}
	if addnet {
		c.AddNet = s
	} else {
		c.SHA256 = s
	}
	h.mu.Lock()
	h.cache[abs] = c
	_ = h.save() // best effort: a cache that cannot be written (a read-only image) costs a rehash in the next process only
	h.mu.Unlock()
	return s, nil
}

// FileSHA256 returns the hex SHA-256 of the file at path, read now (no
// cache).
func FileSHA256(path string) (string, error) { return hashFile(path, false) }

// hashFile hashes the whole file, or its safetensors data section.
func hashFile(path string, addnet bool) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("modellib: %w", err)
	}
	defer f.Close()
	var r io.Reader = f
	if addnet {
		var n [8]byte
		if _, err := io.ReadFull(f, n[:]); err != nil {
			return "", fmt.Errorf("modellib: %s: not a safetensors file: %w", path, err)
		}
		st, err := f.Stat()
		if err != nil {
			return "", fmt.Errorf("modellib: %w", err)
		}
		hl := binary.LittleEndian.Uint64(n[:])
		if hl > uint64(st.Size()-8) {
			return "", fmt.Errorf("modellib: %s: header length %d runs past the file", path, hl)
		}
		if _, err := f.Seek(8+int64(hl), io.SeekStart); err != nil {
			return "", fmt.Errorf("modellib: %w", err)
		}
	}
	sum := sha256.New()
	if _, err := io.Copy(sum, r); err != nil {
		return "", fmt.Errorf("modellib: hashing %s: %w", path, err)
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}

// save writes the cache (h.mu held), merging entries another process
// wrote meanwhile.
func (h *Hashes) save() error {
	if h.path == "" {
		return nil
	}
	if b, err := os.ReadFile(h.path); err == nil {
		var other map[string]cached
		if json.Unmarshal(b, &other) == nil {
			for k, v := range other {
				if _, ok := h.cache[k]; !ok {
					h.cache[k] = v
				}
			}
		}
	}
	b, err := json.MarshalIndent(h.cache, "", " ")
	if err != nil {
		return fmt.Errorf("modellib: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(h.path), 0o755); err != nil {
		return fmt.Errorf("modellib: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(h.path), ".hashes-*")
	if err != nil {
		return fmt.Errorf("modellib: %w", err)
	}
	_, werr := tmp.Write(b)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("modellib: %w", err)
	}
	if err := os.Rename(tmp.Name(), h.path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("modellib: %w", err)
	}
	return nil
}
