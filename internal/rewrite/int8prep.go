package rewrite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// Int8Result is a model rewritten by PrepareInt8: the graph rewrites, then
// Quantize, written as a self-contained model (model.onnx and its own
// weight file) in a cache entry.
type Int8Result struct {
	// Path is the rewritten model.onnx, or Source when nothing was
	// quantized.
	Path   string
	Source string
	// Rewrites says what the graph rewrites did; Int8 what Quantize did
	// (both as recorded in the cache on a hit).
	Rewrites Report
	Int8     QuantizeReport
	Cached   bool
	// Checked is what MarkChecked recorded for this entry (e.g. the
	// output's relative error against the original), or nil.
	Checked map[string]float64
	Elapsed time.Duration

	dir string
}

// Changed reports whether anything was quantized.
func (r *Int8Result) Changed() bool { return r.Int8.Changed() }

type int8Meta struct {
	Source   string             `json:"source"`
	Key      string             `json:"key"`
	Rewrites Report             `json:"rewrites"`
	Int8     QuantizeReport     `json:"int8"`
	Checked  map[string]float64 `json:"checked,omitempty"`
}

const (
	int8MetaFile    = "int8.json"
	int8WeightsFile = "weights.int8"
)

// PrepareInt8 applies the rewrites rs and then Quantize with q to the
// model file src and keeps the result in cacheDir/<key>/, the key being
// the content hash of src, the identity of its external data files, rs and
// q (ranges included); a later call with the same arguments returns the
// entry without decoding anything. Unlike Prepare's entries, the model is
// self-contained: every weight it reads, int8 or float32, is in the
// entry's own weights.int8, so that ONNX Runtime never maps the original
// float32 weight file. The user's files are never modified.
func PrepareInt8(src string, rs []Rewrite, q QuantizeOptions, cacheDir string) (res *Int8Result, err error) {
	start := time.Now()
	defer func() {
		if res != nil {
			res.Elapsed = time.Since(start)
		}
	}()
	if cacheDir == "" {
		return nil, errors.New("rewrite: int8 needs a cache folder for its weights")
	}
	for _, r := range rs {
		if _, err := Parse(string(r)); err != nil {
			return nil, err
		}
	}
	exts, err := onnxpb.ExternalFiles(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %s: %w", src, err)
	}
	base, err := cacheKey(src, exts, rs)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s", base, q.key())
	k := "int8-" + hex.EncodeToString(h.Sum(nil))[:32]
	dir := filepath.Join(cacheDir, k)
	res = &Int8Result{Source: src, Path: src}
	if m, ok := readInt8Meta(dir); ok {
		res.Rewrites, res.Int8, res.Checked, res.Cached, res.dir = m.Rewrites, m.Int8, m.Checked, true, dir
		if m.Int8.Changed() {
			res.Path = filepath.Join(dir, modelName)
		}
		return res, nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	m, err := onnxpb.Unmarshal(data)
	data = nil
	if err != nil {
		return nil, fmt.Errorf("rewrite: %s: %w", src, err)
	}
	if res.Rewrites, err = Apply(m, rs...); err != nil {
		return nil, err
	}
	qm, err := Quantize(m, filepath.Dir(src), q)
	if err != nil {
		return nil, err
	}
	res.Int8 = qm.Report
	meta := int8Meta{Source: src, Key: k, Rewrites: res.Rewrites, Int8: res.Int8}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheDir, k+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	defer os.RemoveAll(tmp) // gone already after a successful rename
	if res.Int8.Changed() {
		if err := onnxpb.WriteFile(filepath.Join(tmp, modelName), qm.Model, &onnxpb.ExternalData{File: int8WeightsFile, Align: 64}); err != nil {
			return nil, fmt.Errorf("rewrite: int8: %w", err)
		}
		if err := qm.Err(); err != nil {
			return nil, fmt.Errorf("rewrite: int8: %w", err)
		}
	}
	if err := writeInt8Meta(tmp, meta); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, ok := readInt8Meta(dir); !ok {
			return nil, fmt.Errorf("rewrite: %w", err)
		}
		// another process won the race: its entry is the same
	}
	res.dir = dir
	if res.Int8.Changed() {
		res.Path = filepath.Join(dir, modelName)
	}
	return res, nil
}

func readInt8Meta(dir string) (int8Meta, bool) {
	var m int8Meta
	b, err := os.ReadFile(filepath.Join(dir, int8MetaFile))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return int8Meta{}, false
	}
	if m.Int8.Changed() {
		for _, f := range []string{modelName, int8WeightsFile} {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				return int8Meta{}, false
			}
		}
	}
	return m, true
}

func writeInt8Meta(dir string, m int8Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	tmp := filepath.Join(dir, int8MetaFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, int8MetaFile)); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	return nil
}

// MarkChecked records figures about the entry (such as the output's
// relative error against the original on the check inputs) so that a
// later PrepareInt8 returns them in Checked and the check need not run
// again.
func (r *Int8Result) MarkChecked(figures map[string]float64) error {
	r.Checked = figures
	if r.dir == "" {
		return nil
	}
	m, ok := readInt8Meta(r.dir)
	if !ok {
		return fmt.Errorf("rewrite: cache entry %s is gone", r.dir)
	}
	m.Checked = figures
	return writeInt8Meta(r.dir, m)
}

// Open opens the quantized model (or the source when nothing changed).
func (r *Int8Result) Open(ctx context.Context, o ort.Options) (*ort.Session, error) {
	ins, outs, err := ort.ReadIO(r.Source)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	return ort.Open(ctx, r.Path, ins, outs, o)
}

// Errors of a model against its reference on the same inputs.
type Errors struct {
	// MaxAbs is the largest absolute difference; RelRMS the root mean
	// square difference over the reference's root mean square, over all
	// float32 outputs together. NaN in either output gives +Inf for both.
	MaxAbs, RelRMS float64
}

// Compare runs the model at ref and the one at path (same inputs and
// outputs), one after the other, on in and returns their differences.
func Compare(ctx context.Context, ref, path string, in []ort.Tensor, o ort.Options) (Errors, error) {
	ins, outs, err := ort.ReadIO(ref)
	if err != nil {
		return Errors{}, fmt.Errorf("rewrite: %w", err)
	}
	run := func(p string) (out []ort.Tensor, err error) {
		s, err := ort.Open(ctx, p, ins, outs, o)
		if err != nil {
			return nil, fmt.Errorf("rewrite: compare: %w", err)
		}
		defer func() { err = errors.Join(err, s.Close()) }()
		out = make([]ort.Tensor, len(outs))
		if err := s.Run(ctx, in, out); err != nil {
			return nil, fmt.Errorf("rewrite: compare: %w", err)
		}
		return out, nil
	}
	want, err := run(ref)
	if err != nil {
		return Errors{}, err
	}
	got, err := run(path)
	if err != nil {
		return Errors{}, err
	}
	var e Errors
	var num, den float64
	for i := range want {
		a, ok1 := want[i].Data.([]float32)
		b, ok2 := got[i].Data.([]float32)
		if !ok1 || !ok2 {
			continue
		}
		d := Diff(a, b)
		if len(a) != len(b) || d.MaxAbs > 1e300 {
			return Errors{MaxAbs: inf, RelRMS: inf}, nil
		}
		e.MaxAbs = max(e.MaxAbs, d.MaxAbs)
		for j := range a {
			x := float64(a[j]) - float64(b[j])
			num += x * x
			den += float64(a[j]) * float64(a[j])
		}
	}
	if den > 0 {
		e.RelRMS = sqrt(num / den)
	}
	return e, nil
}
