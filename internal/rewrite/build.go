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
	"strconv"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// Plan says what Build does to a model: the graph rewrites, then int8
// quantization, then the step-caching split.
type Plan struct {
	Rewrites []Rewrite
	// Int8, when set, quantizes the rewritten graph (see Quantize).
	Int8 *QuantizeOptions
	// StepCache, when positive, splits the UNet for step caching at that
	// skip connection (see SplitDeep; 1 = the shallowest).
	StepCache int
}

// Int8Plan is the plan of a component's int8 build: the graph rewrites
// names gives (as session.Options.Rewrites spells them), then q.
func Int8Plan(names []string, q QuantizeOptions) (Plan, error) {
	p := Plan{Int8: &q}
	for _, name := range names {
		r, err := Parse(name)
		if err != nil {
			return Plan{}, err
		}
		p.Rewrites = append(p.Rewrites, r...)
	}
	return p, nil
}

func (p Plan) key() string {
	k := fmt.Sprintf("build v1 step-cache=%d", p.StepCache)
	if p.Int8 != nil {
		k += "\n" + p.Int8.key()
	}
	return k
}

// Built is a model rewritten by Build, written as a self-contained model
// (model.onnx and its own weight file) in a cache entry.
type Built struct {
	// Path is the rewritten model.onnx, or Source when the plan changed
	// nothing. With step caching it has the extra output FeatureInput.
	Path string
	// ShallowPath is the step cache's shallow model (extra input
	// FeatureInput), beside Path and reading its weight file; "" without
	// step caching.
	ShallowPath string
	Source      string
	// Rewrites, Int8 and Split say what each part of the plan did (as
	// recorded in the cache on a hit).
	Rewrites Report
	Int8     QuantizeReport
	Split    SplitReport
	Cached   bool
	// Checked is what MarkChecked recorded for this entry (e.g. the
	// output's relative error against the original), or nil.
	Checked map[string]float64
	Elapsed time.Duration

	dir string
}

// Summary says what the build quantized and, when any applied, which
// graph rewrites, for a load report ("int8: …; baddbmm×… …").
func (r *Built) Summary() string {
	s := r.Int8.String()
	if r.Rewrites.Changed() {
		s += "; " + r.Rewrites.String()
	}
	return s
}

// Changed reports whether the model differs from Source.
func (r *Built) Changed() bool { return r.Path != r.Source }

type buildMeta struct {
	Source   string             `json:"source"`
	Key      string             `json:"key"`
	Rewrites Report             `json:"rewrites"`
	Int8     QuantizeReport     `json:"int8"`
	Split    SplitReport        `json:"split"`
	Changed  bool               `json:"changed"`
	Checked  map[string]float64 `json:"checked,omitempty"`
}

const (
	buildMetaFile = "build.json"
	builtWeights  = "weights.bin"
	shallowName   = "shallow.onnx"
)

// Build applies plan p to the model file src and keeps the result in
// cacheDir/<key>/, the key being the content hash of src, the identity of
// its external data files and p (calibrated ranges included); a later
// call with the same arguments returns the entry without decoding
// anything. Unlike Prepare's entries, the model is self-contained: every
// weight it reads, int8 or float32, is in the entry's own weights.bin
// (which the step cache's shallow model reads too), so that ONNX Runtime
// never maps the original weight file. The user's files are never
// modified.
func Build(src string, p Plan, cacheDir string) (res *Built, err error) {
	start := time.Now()
	defer func() {
		if res != nil {
			res.Elapsed = time.Since(start)
		}
	}()
	if cacheDir == "" {
		return nil, errors.New("rewrite: Build needs a cache folder for its weights")
	}
	for _, r := range p.Rewrites {
		if _, err := Parse(string(r)); err != nil {
			return nil, err
		}
	}
	if p.StepCache < 0 {
		return nil, fmt.Errorf("rewrite: step cache branch %d", p.StepCache)
	}
	exts, err := onnxpb.ExternalFiles(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %s: %w", src, err)
	}
	base, err := cacheKey(src, exts, p.Rewrites)
	if err != nil {
		return nil, err
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s", base, p.key())
	k := "built-" + hex.EncodeToString(h.Sum(nil))[:32]
	dir := filepath.Join(cacheDir, k)
	res = &Built{Source: src, Path: src}
	if m, ok := readBuildMeta(dir); ok {
		res.Cached = true
		res.fromMeta(m, dir)
		return res, nil
	}
	m, err := readModel(src)
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	meta := buildMeta{Source: src, Key: k}
	if meta.Rewrites, err = Apply(m, p.Rewrites...); err != nil {
		return nil, err
	}
	sink := &fillErrors{}
	if p.Int8 != nil {
		q, err := Quantize(m, filepath.Dir(src), *p.Int8)
		if err != nil {
			return nil, err
		}
		meta.Int8, sink = q.Report, &q.fillErrors
	} else {
		selfContained(m, weightSource{dir: filepath.Dir(src)}, sink)
	}
	var shallow *onnxpb.Model
	if p.StepCache > 0 {
		if _, shallow, meta.Split, err = SplitDeep(m, p.StepCache); err != nil {
			return nil, err
		}
	}
	meta.Changed = meta.Rewrites.Changed() || meta.Int8.Changed() || shallow != nil
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	tmp, err := os.MkdirTemp(cacheDir, k+".tmp-")
	if err != nil {
		return nil, fmt.Errorf("rewrite: %w", err)
	}
	defer os.RemoveAll(tmp) // gone already after a successful rename
	if meta.Changed {
		path := filepath.Join(tmp, modelName)
		if err := onnxpb.WriteFile(path, m, &onnxpb.ExternalData{File: builtWeights, Align: 64}); err != nil {
			return nil, fmt.Errorf("rewrite: %w", err)
		}
		if err := sink.Err(); err != nil {
			return nil, fmt.Errorf("rewrite: %w", err)
		}
		if shallow != nil {
			if err := writeShallow(filepath.Join(tmp, shallowName), path, shallow); err != nil {
				return nil, err
			}
		}
	}
	if err := writeBuildMeta(tmp, meta); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, ok := readBuildMeta(dir); !ok {
			return nil, fmt.Errorf("rewrite: %w", err)
		}
		// another process won the race: its entry is the same
	}
	res.fromMeta(meta, dir)
	return res, nil
}

func (r *Built) fromMeta(m buildMeta, dir string) {
	r.Rewrites, r.Int8, r.Split, r.Checked, r.dir = m.Rewrites, m.Int8, m.Split, m.Checked, dir
	if m.Changed {
		r.Path = filepath.Join(dir, modelName)
		if m.Split.Branch > 0 {
			r.ShallowPath = filepath.Join(dir, shallowName)
		}
	}
}

// writeShallow writes the shallow model to path, its initializers reading
// the weight file the full model at full was written with.
func writeShallow(path, full string, m *onnxpb.Model) error {
	io, err := onnxpb.ReadIO(full)
	if err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	where := map[string]onnxpb.InitializerInfo{}
	for _, t := range io.Initializers {
		where[t.Name] = t
	}
	inits := make([]*onnxpb.Tensor, 0, len(m.Graph.Initializer))
	for _, t := range m.Graph.Initializer {
		w, ok := where[t.Name]
		if !ok {
			return fmt.Errorf("rewrite: step cache: %s lacks initializer %s", full, t.Name)
		}
		if w.External() {
			t = &onnxpb.Tensor{Name: t.Name, Dims: t.Dims, DataType: t.DataType, DataLocation: onnxpb.LocationExternal,
				ExternalData: []onnxpb.StringEntry{
					{Key: "location", Value: w.Location},
					{Key: "offset", Value: strconv.FormatInt(w.Offset, 10)},
					{Key: "length", Value: strconv.FormatInt(w.Length, 10)},
				}}
		}
		inits = append(inits, t)
	}
	g := *m.Graph
	g.Initializer = inits
	c := *m
	c.Graph = &g
	if err := onnxpb.WriteFile(path, &c, nil); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	return nil
}

func readBuildMeta(dir string) (buildMeta, bool) {
	var m buildMeta
	b, err := os.ReadFile(filepath.Join(dir, buildMetaFile))
	if err != nil || json.Unmarshal(b, &m) != nil {
		return buildMeta{}, false
	}
	if m.Changed {
		files := []string{modelName, builtWeights}
		if m.Split.Branch > 0 {
			files = append(files, shallowName)
		}
		for _, f := range files {
			if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
				return buildMeta{}, false
			}
		}
	}
	return m, true
}

func writeBuildMeta(dir string, m buildMeta) error { return writeJSON(dir, buildMetaFile, m) }

// writeJSON writes v as indented JSON to the file name of the cache entry
// dir (replaceFile).
func writeJSON(dir, name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	return replaceFile(dir, name, b)
}

// replaceFile writes b to the file name of the cache entry dir through a
// temporary file renamed over it, so that a reader sees the old file or
// the new one, never part of one.
func replaceFile(dir, name string, b []byte) error {
	tmp := filepath.Join(dir, name+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	return nil
}

// updateEntry changes by set the metadata file name of the cache entry dir,
// as read reads it (false: the entry is gone). It does nothing for an
// empty dir (a result without a cache entry).
func updateEntry[M any](dir, name string, read func(dir string) (M, bool), set func(*M)) error {
	if dir == "" {
		return nil
	}
	m, ok := read(dir)
	if !ok {
		return fmt.Errorf("rewrite: cache entry %s is gone", dir)
	}
	set(&m)
	return writeJSON(dir, name, m)
}

// MarkChecked records figures about the entry (such as the output's
// relative error against the original on the check inputs) so that a
// later Build returns them in Checked and the check need not run
// again.
func (r *Built) MarkChecked(figures map[string]float64) error {
	r.Checked = figures
	return updateEntry(r.dir, buildMetaFile, readBuildMeta, func(m *buildMeta) { m.Checked = figures })
}

// Open opens the built model (or the source when nothing changed), with
// the source's inputs and outputs.
func (r *Built) Open(ctx context.Context, o ort.Options) (*ort.Session, error) {
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
