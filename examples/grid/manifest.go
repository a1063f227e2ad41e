package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Record is one line of a manifest (JSON Lines): the lineage of one image.
type Record struct {
	Key     string `json:"key"`   // the cell: ItemKey(subject, style, replica)
	Index   int    `json:"index"` // position in the grid
	Total   int    `json:"total"` // items in the grid
	Subject string `json:"subject"`
	Style   string `json:"style"`
	Replica int    `json:"replica"`

	Prompt         string  `json:"prompt"`
	NegativePrompt string  `json:"negative_prompt"`
	BaseSeed       int64   `json:"base_seed"`
	Seed           int64   `json:"seed"`
	Generator      string  `json:"generator"`
	Scheduler      string  `json:"scheduler"` // as resolved by the engine
	Steps          int     `json:"steps"`
	Guidance       float64 `json:"guidance"`
	Width          int     `json:"width"`
	Height         int     `json:"height"`

	Model     string `json:"model"`      // the model folder, absolute
	ModelHash string `json:"model_hash"` // see sd.HashModel
	Library   string `json:"library"`    // see libraryVersion
	// Params is a digest of what decides the image (the requested
	// parameters and ModelHash); resume redoes an item whose Params differ.
	Params string `json:"params"`

	Shard   string  `json:"shard,omitempty"` // "i/n" of the run that made it
	Timings Timings `json:"timings"`
	Created string  `json:"created"` // RFC 3339, UTC

	File   string `json:"file"`   // relative to the manifest's folder, slash-separated
	SHA256 string `json:"sha256"` // of the file's bytes
}

// Timings are the engine's per-request metrics, in milliseconds.
type Timings struct {
	Queue   float64 `json:"queue_ms"` // submit to the start of encoding, plus the waits between stages
	Encode  float64 `json:"encode_ms"`
	Denoise float64 `json:"denoise_ms"`
	Decode  float64 `json:"decode_ms"`
	Model   float64 `json:"model_ms"` // inside ONNX Runtime
	Total   float64 `json:"total_ms"` // submit to result
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// manifestName is the manifest a run appends to: one file per shard, so
// that shards can share an output folder without sharing a file.
func manifestName(s Shard) string {
	if s.Count <= 1 {
		return "manifest.jsonl"
	}
	return fmt.Sprintf("manifest-%d-of-%d.jsonl", s.Index, s.Count)
}

// manifests lists the manifests in dir.
func manifests(dir string) ([]string, error) {
	names, err := filepath.Glob(filepath.Join(dir, "manifest*.jsonl"))
	slices.Sort(names)
	return names, err
}

// readManifest reads the records of one manifest. A line that is not a
// record (an append torn by a crash, or by a writer that did not hold the
// lock) is skipped wherever it is: its item has no record, so a resumed
// run makes it again.
func readManifest(path string) ([]Record, error) {
	recs, _, err := scanManifest(path)
	return recs, err
}

// scanManifest is readManifest that also returns the numbers of the lines
// it skipped.
func scanManifest(path string) (recs []Record, torn []int, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	for i, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r Record
		if err := json.Unmarshal(line, &r); err != nil || r.Key == "" {
			torn = append(torn, i+1)
			continue
		}
		recs = append(recs, r)
	}
	return recs, torn, nil
}

// readDir reads every manifest in dir; for a key seen twice the newer
// record wins (ties: the later line, manifests in name order).
func readDir(dir string) (map[string]Record, error) {
	names, err := manifests(dir)
	if err != nil {
		return nil, err
	}
	out := map[string]Record{}
	for _, name := range names {
		recs, err := readManifest(name)
		if err != nil {
			return nil, err
		}
		for _, r := range recs {
			if prev, ok := out[r.Key]; !ok || r.Created >= prev.Created {
				out[r.Key] = r
			}
		}
	}
	return out, nil
}

// sorted returns the records by grid index.
func sorted(m map[string]Record) []Record {
	recs := make([]Record, 0, len(m))
	for _, r := range m {
		recs = append(recs, r)
	}
	slices.SortFunc(recs, func(a, b Record) int { return a.Index - b.Index })
	return recs
}

// fileSHA256 returns the hex sha256 of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// verify reports whether the record's file exists under dir with its hash.
func verify(dir string, r Record) error {
	if r.File == "" || filepath.IsAbs(r.File) || strings.Contains(r.File, "..") {
		return fmt.Errorf("grid: record %s: bad file %q", r.Key, r.File)
	}
	got, err := fileSHA256(filepath.Join(dir, filepath.FromSlash(r.File)))
	if err != nil {
		return err
	}
	if got != r.SHA256 {
		return fmt.Errorf("grid: %s: sha256 %s, manifest says %s", r.File, got, r.SHA256)
	}
	return nil
}

// appender appends records to a manifest, one fsynced line each, written
// in one O_APPEND write so that no two lines interleave. It is safe for
// concurrent use; the manifest's lock keeps other processes out.
type appender struct {
	mu sync.Mutex
	f  *os.File
}

// openAppender opens path for appending, first cutting a torn last line
// so that the next record starts on a line of its own.
func openAppender(path string) (*appender, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("grid: manifest: %w", err)
	}
	b, err := io.ReadAll(f)
	if err == nil && len(b) > 0 && b[len(b)-1] != '\n' {
		err = f.Truncate(int64(bytes.LastIndexByte(b, '\n') + 1))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("grid: manifest: %w", err), f.Close())
	}
	return &appender{f: f}, nil
}

func (a *appender) append(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("grid: manifest: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("grid: manifest: %w", err)
	}
	return nil
}

func (a *appender) Close() error { return a.f.Close() }

// writeFileAtomic writes data to path through a temporary file in the same
// folder, synced and renamed into place: a reader sees the old file or the
// whole new one, never a part.
func writeFileAtomic(path string, write func(io.Writer) error) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			os.Remove(f.Name())
		}
	}()
	w := bufio.NewWriter(f)
	err = write(w)
	if err == nil {
		err = w.Flush()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
