package server

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/sd"
)

// The models folder's scan, and the metrics summed over its models.

// scanModels lists the models under dir, sorted by their relative path.
func scanModels(dir string) ([]*modelEntry, error) {
	var out []*modelEntry
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		isDir := d.IsDir()
		if d.Type()&fs.ModeSymlink != 0 { // a linked model folder counts as a folder
			if info, err := os.Stat(p); err == nil && info.IsDir() {
				isDir = true
			}
		}
		switch {
		case isDir:
			if _, err := os.Stat(filepath.Join(p, "model_index.json")); err != nil || p == dir {
				return nil
			}
			size, mod, err := folderSize(p)
			if err != nil {
				return err
			}
			out = append(out, &modelEntry{name: rel, rel: rel, file: p, size: size, modTime: mod})
			if !d.IsDir() {
				return nil // a link: SkipDir would skip the rest of its parent
			}
			return filepath.SkipDir
		case d.Type().IsRegular() || d.Type()&fs.ModeSymlink != 0:
			ext := strings.ToLower(filepath.Ext(p))
			if ext != ".safetensors" && ext != ".ckpt" {
				return nil
			}
			info, err := os.Stat(p)
			if err != nil {
				return err
			}
			out = append(out, &modelEntry{name: strings.TrimSuffix(rel, filepath.Ext(rel)), rel: rel, file: p, size: info.Size(), modTime: info.ModTime()})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("server: scanning the models folder: %w", err)
	}
	slices.SortFunc(out, func(a, b *modelEntry) int { return strings.Compare(a.rel, b.rel) })
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

// metrics sums the counters of every model, those closed included (their
// last counters are kept), so that the service's counters never go back.
func (m *Models) metrics() sd.Metrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	sum := m.closed
	sum.BatchSizes = maps.Clone(sum.BatchSizes)
	for _, e := range m.entries {
		if e.eng != nil {
			addMetrics(&sum, e.eng.Metrics())
		}
	}
	return sum
}

// addMetrics adds b's counters to a.
func addMetrics(a *sd.Metrics, b sd.Metrics) {
	a.Submitted += b.Submitted
	a.Rejected += b.Rejected
	a.Completed += b.Completed
	a.Failed += b.Failed
	a.Canceled += b.Canceled
	a.InFlight += b.InFlight
	a.Images += b.Images
	a.UNetCalls += b.UNetCalls
	a.UNetItems += b.UNetItems
	a.UNetTime += b.UNetTime
	a.Encode += b.Encode
	a.Denoise += b.Denoise
	a.Decode += b.Decode
	a.EncodeModel += b.EncodeModel
	a.DenoiseModel += b.DenoiseModel
	a.DecodeModel += b.DecodeModel
	a.QueueWait += b.QueueWait
	for k, v := range b.BatchSizes {
		if a.BatchSizes == nil {
			a.BatchSizes = map[int]int64{}
		}
		a.BatchSizes[k] += v
	}
}
