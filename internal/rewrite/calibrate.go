package rewrite

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// ConvValues returns the values whose ranges Quantize uses for static
// convolutions: the input and the output of every Conv with a constant
// weight, in graph order, without repeats.
func ConvValues(m *onnxpb.Model) []string {
	if m == nil || m.Graph == nil {
		return nil
	}
	inits := map[string]bool{}
	for _, t := range m.Graph.Initializer {
		inits[t.Name] = true
	}
	var vs []string
	seen := map[string]bool{}
	for _, n := range m.Graph.Nodes {
		if n.OpType != "Conv" || (n.Domain != "" && n.Domain != "ai.onnx") || len(n.Input) < 2 || len(n.Output) != 1 || !inits[n.Input[1]] {
			continue
		}
		for _, v := range []string{n.Input[0], n.Output[0]} {
			if !seen[v] && !inits[v] {
				seen[v] = true
				vs = append(vs, v)
			}
		}
	}
	return vs
}

// Calibrate runs the model file at path on each set of inputs in feeds
// (one Tensor per model input, in the model's order) and returns the
// range each of values took over all of them. The model is opened with
// those values as extra outputs, so no fusion hides them; a value that is
// not float32 or not in the graph is an error. It is the calibration
// Quantize's static convolutions need: ranges from the model's own run.
func Calibrate(ctx context.Context, path string, values []string, feeds [][]ort.Tensor, o ort.Options) (map[string]Range, error) {
	if len(feeds) == 0 {
		return nil, errors.New("rewrite: calibrate: no inputs")
	}
	m, err := readModel(path)
	if err != nil {
		return nil, fmt.Errorf("rewrite: calibrate: %w", err)
	}
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		return nil, fmt.Errorf("rewrite: calibrate: %w", err)
	}
	produced := map[string]bool{}
	for _, n := range m.Graph.Nodes {
		for _, v := range n.Output {
			produced[v] = true
		}
	}
	for _, v := range m.Graph.Input {
		produced[v.Name] = true
	}
	isOut := map[string]int{}
	for i, v := range outs {
		isOut[v.Name] = i
	}
	extra := outs
	for _, v := range values {
		if !produced[v] {
			return nil, fmt.Errorf("rewrite: calibrate: %s has no value %q", path, v)
		}
		if _, ok := isOut[v]; ok {
			continue
		}
		isOut[v] = len(extra)
		extra = append(extra, ort.IOInfo{Name: v, DType: ort.Float32})
		m.Graph.Output = append(m.Graph.Output, onnxpb.ValueInfo{Name: v, ElemType: onnxpb.Float, UnknownRank: true})
	}
	b, err := onnxpb.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rewrite: calibrate: %w", err)
	}
	m = nil
	s, err := ort.OpenData(ctx, path+" (calibration)", b, filepath.Dir(path), ins, extra, o)
	b = nil
	if err != nil {
		return nil, fmt.Errorf("rewrite: calibrate: %w", err)
	}
	defer s.Close()
	ranges := make(map[string]Range, len(values))
	for _, v := range values {
		ranges[v] = Range{Min: float32(math.Inf(1)), Max: float32(math.Inf(-1))}
	}
	for fi, in := range feeds {
		out := make([]ort.Tensor, len(extra))
		if err := s.Run(ctx, in, out); err != nil {
			return nil, fmt.Errorf("rewrite: calibrate: input set %d: %w", fi, err)
		}
		for _, v := range values {
			d, ok := out[isOut[v]].Data.([]float32)
			if !ok {
				return nil, fmt.Errorf("rewrite: calibrate: value %q is %T, not float32", v, out[isOut[v]].Data)
			}
			r := ranges[v]
			for _, x := range d {
				if math.IsNaN(float64(x)) || math.IsInf(float64(x), 0) {
					return nil, fmt.Errorf("rewrite: calibrate: value %q is not finite on input set %d", v, fi)
				}
				r.Min, r.Max = min(r.Min, x), max(r.Max, x)
			}
			ranges[v] = r
		}
	}
	return ranges, nil
}

// WidenRanges returns rs with each range widened by frac of its width on
// both sides, for values a model may reach beyond what calibration saw
// (other prompts, seeds or sizes).
func WidenRanges(rs map[string]Range, frac float64) map[string]Range {
	out := make(map[string]Range, len(rs))
	names := make([]string, 0, len(rs))
	for n := range rs {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		r := rs[n]
		w := float64(r.Max-r.Min) * frac
		out[n] = Range{Min: float32(float64(r.Min) - w), Max: float32(float64(r.Max) + w)}
	}
	return out
}

// rangesFile is the name of a calibration entry in the cache.
const rangesFile = "ranges.json"

type rangesEntry struct {
	Source string           `json:"source"`
	ID     string           `json:"id"`
	Ranges map[string]Range `json:"ranges"`
}

func rangesDir(src, id, cacheDir string) (string, error) {
	exts, err := onnxpb.ExternalFiles(src)
	if err != nil {
		return "", fmt.Errorf("rewrite: %s: %w", src, err)
	}
	base, err := cacheKey(src, exts, nil)
	if err != nil {
		return "", err
	}
	h := sha256.Sum256([]byte("ranges v1\n" + base + "\n" + id))
	return filepath.Join(cacheDir, "ranges-"+hex.EncodeToString(h[:])[:32]), nil
}

// CachedRanges returns the ranges SaveRanges kept for the model file src
// (its content and the identity of its external data) calibrated as id
// says (the prompt set, size and steps of the run), and whether there
// were any.
func CachedRanges(src, id, cacheDir string) (map[string]Range, bool) {
	dir, err := rangesDir(src, id, cacheDir)
	if err != nil {
		return nil, false
	}
	b, err := os.ReadFile(filepath.Join(dir, rangesFile))
	if err != nil {
		return nil, false
	}
	var e rangesEntry
	if json.Unmarshal(b, &e) != nil || e.ID != id || len(e.Ranges) == 0 {
		return nil, false
	}
	return e.Ranges, true
}

// SaveRanges keeps rs, calibrated on src as id says, for CachedRanges.
func SaveRanges(src, id, cacheDir string, rs map[string]Range) error {
	dir, err := rangesDir(src, id, cacheDir)
	if err != nil {
		return err
	}
	b, err := json.Marshal(rangesEntry{Source: src, ID: id, Ranges: rs})
	if err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("rewrite: %w", err)
	}
	return replaceFile(dir, rangesFile, b)
}
