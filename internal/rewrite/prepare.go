package rewrite

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// version changes whenever a rewrite's output changes, so that stale cache
// entries are never used.
const version = "1"

// Result is a rewritten model ready for ONNX Runtime.
type Result struct {
	// Path is the model to open: Source when nothing changed, else the
	// rewritten model.onnx in the cache folder, beside hard links to
	// Source's external data files. Empty when Data alone is returned (no
	// cache, or the links could not be made).
	Path string
	// Source is the original model file.
	Source string
	// Data is the rewritten model, for ort.OpenData with ExternalDir; nil
	// when nothing changed or the result came from the cache.
	Data []byte
	// ExternalDir is the folder of the original external data files.
	ExternalDir string
	// Report says what was rewritten (as recorded in the cache on a hit).
	Report Report
	// Cached reports that the result was found in the cache.
	Cached bool
	// Verified is the largest output difference recorded by MarkVerified
	// for this cache entry, or -1 when it was never verified.
	Verified float64
	// Elapsed is the time Prepare took.
	Elapsed time.Duration

	dir string // cache entry, or ""
}

// Changed reports whether the model differs from Source.
func (r *Result) Changed() bool { return r.Report.Changed() }

// meta is the record kept beside a cached model.
type meta struct {
	Source   string   `json:"source"`
	Rewrites string   `json:"rewrites"`
	Report   Report   `json:"report"`
	Verified *float64 `json:"verified,omitempty"`
}

const (
	metaFile  = "rewrite.json"
	modelName = "model.onnx"
)

// Prepare rewrites the model file src with rs. With cacheDir set, the
// result is kept in cacheDir/<key>/ (model.onnx, hard links to the external
// data files, and a rewrite.json record) and a later call with the same
// model, external data and rewrites returns it without decoding anything;
// the user's files are never modified. Without cacheDir, or when hard links
// cannot be made (another file system), Result carries the rewritten bytes
// for ort.OpenData. A model that no rewrite changes is returned as src.
func Prepare(src string, rs []Rewrite, cacheDir string) (*Result, error) {
	for _, r := range rs {
		if _, err := Parse(string(r)); err != nil {
			return nil, err
		}
	}
	exts, err := onnxpb.ExternalFiles(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %s: %w", src, err)
	}
	return prepare(src, exts, rs, cacheDir)
}

// prepare is Prepare for a model whose external data files are known.
func prepare(src string, exts []string, rs []Rewrite, cacheDir string) (res *Result, err error) {
	start := time.Now()
	defer func() {
		if res != nil {
			res.Elapsed = time.Since(start)
		}
	}()
	res = &Result{Source: src, ExternalDir: filepath.Dir(src), Verified: -1}
	// the key is hashed from the file as it streams by, so that a cached
	// model is never held in memory (a text encoder with its weights
	// inside the graph is half a gigabyte)
	k, err := cacheKey(src, exts, rs)
	if err != nil {
		return nil, err
	}
	if cacheDir != "" {
		dir := filepath.Join(cacheDir, k)
		if m, ok := readMeta(dir); ok {
			res.Report, res.Cached, res.dir = m.Report, true, dir
			res.Path = src
			if m.Report.Changed() {
				res.Path = filepath.Join(dir, modelName)
			}
			if m.Verified != nil {
				res.Verified = *m.Verified
			}
			return res, nil
		}
	}
	m, err := readModel(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	rep, err := Apply(m, rs...)
	if err != nil {
		return nil, err
	}
	res.Report = rep
	if !rep.Changed() {
		res.Path = src
		if cacheDir != "" {
			// remember that there is nothing to do
			if dir, err := writeEntry(cacheDir, k, nil, src, exts, meta{Source: src, Rewrites: key(rs), Report: rep}); err == nil {
				res.dir = dir
			}
		}
		return res, nil
	}
	out, err := onnxpb.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %s: %w", src, err)
	}
	res.Data = out
	if cacheDir == "" {
		return res, nil
	}
	dir, err := writeEntry(cacheDir, k, out, src, exts, meta{Source: src, Rewrites: key(rs), Report: rep})
	if err != nil {
		// no cache: the caller opens Data from memory
		return res, nil //nolint:nilerr // the cache is optional
	}
	res.dir, res.Path = dir, filepath.Join(dir, modelName)
	return res, nil
}

// cacheKey hashes the model file's bytes, the identity of its external
// data files (name, size, modification time) and the rewrite set.
func cacheKey(src string, exts []string, rs []Rewrite) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "sdpipe-rewrite %s\n%s\n", version, key(rs))
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("rewrite: %w", err)
	}
	_, err = io.Copy(h, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("rewrite: %s: %w", src, err)
	}
	for _, e := range exts {
		st, err := os.Stat(filepath.Join(filepath.Dir(src), e))
		if err != nil {
			return "", fmt.Errorf("rewrite: external data of %s: %w", src, err)
		}
		fmt.Fprintf(h, "\n%s %d %d", e, st.Size(), st.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

func readMeta(dir string) (meta, bool) {
	var m meta
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return meta{}, false
	}
	if m.Report.Changed() {
		if _, err := os.Stat(filepath.Join(dir, modelName)); err != nil {
			return meta{}, false
		}
	}
	return m, true
}

// writeEntry builds the cache entry atomically (cachedir.Build), so that
// a reader never sees half an entry.
func writeEntry(cacheDir, k string, model []byte, src string, exts []string, m meta) (string, error) {
	dir := filepath.Join(cacheDir, k)
	valid := func(dir string) error {
		if _, ok := readMeta(dir); !ok {
			return fmt.Errorf("rewrite: no complete cache entry in %s", dir)
		}
		return nil
	}
	err := cachedir.Build(dir, valid, func(tmp string) error {
		if model != nil {
			if err := os.WriteFile(filepath.Join(tmp, modelName), model, 0o644); err != nil {
				return err
			}
			for _, e := range exts {
				dst := filepath.Join(tmp, e)
				if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
					return err
				}
				if err := os.Link(filepath.Join(filepath.Dir(src), e), dst); err != nil {
					return err
				}
			}
		}
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, metaFile), b, 0o644)
	})
	if err != nil {
		return "", err
	}
	return dir, nil
}

// MarkVerified records in the cache entry that the rewritten model was
// checked against the original with the largest difference maxDiff, so a
// later Prepare reports it in Result.Verified. It does nothing for a result
// without a cache entry.
func (r *Result) MarkVerified(maxDiff float64) error {
	r.Verified = maxDiff
	return updateEntry(r.dir, metaFile, readMeta, func(m *meta) { m.Verified = &maxDiff })
}

// readModel reads and decodes the model file at path; its errors name
// path.
func readModel(path string) (*onnxpb.Model, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m, err := onnxpb.Unmarshal(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}
