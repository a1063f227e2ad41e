package server

import (
	"fmt"
	"maps"
	"path/filepath"

	"github.com/sdpipe/sdpipe/sd"
)

// The models folder's scan, and the metrics summed over its models.

// scanModels lists the models under dir (sd.ListModels), sorted by their
// relative path.
func scanModels(dir string) ([]*modelEntry, error) {
	found, err := sd.ListModels(dir)
	if err != nil {
		return nil, fmt.Errorf("server: scanning the models folder: %w", err)
	}
	out := make([]*modelEntry, 0, len(found))
	for _, f := range found {
		rel, err := filepath.Rel(dir, f.Path)
		if err != nil {
			return nil, fmt.Errorf("server: scanning the models folder: %w", err)
		}
		out = append(out, &modelEntry{name: f.Name, rel: filepath.ToSlash(rel), file: f.Path, size: f.Size, modTime: f.ModTime})
	}
	return out, nil
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
