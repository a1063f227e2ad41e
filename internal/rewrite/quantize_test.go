package rewrite_test

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// int8Tol is the relative RMS error int8 may add to one small layer stack
// on Gaussian inputs: 8-bit activations per tensor and 8-bit weights per
// channel give about 1 % a layer.
const int8Tol = 0.03

// layerModel writes a model with every layer kind Quantize converts: a
// 3×3 and a 1×1 convolution (with biases), a MatMul with a bias Add, a Gemm
// with transposed weights and a bias, and an activation × activation
// MatMul that must stay float32.
func layerModel(t *testing.T, dir string) string {
	t.Helper()
	b := modelgen.NewBuilder(3, onnxpb.Float)
	x := b.Input("x", onnxpb.Float, 2, 32, 12, 12)
	x = b.Op("Add", []string{x, b.Scalar(0.1)}) // so that the first Conv does not read a graph input
	w1 := b.Param("c1.weight", []int64{96, 32, 3, 3}, modelgen.Init{Std: 0.06})
	b1 := b.Param("c1.bias", []int64{96}, modelgen.Init{Std: 0.1})
	h := b.Op("Conv", []string{x, w1, b1}, modelgen.AttrInts("pads", 1, 1, 1, 1), modelgen.AttrInts("kernel_shape", 3, 3))
	h = b.Op("Mul", []string{h, b.Op("Sigmoid", []string{h})})
	w2 := b.Param("c2.weight", []int64{64, 96, 1, 1}, modelgen.Init{Std: 0.1})
	b2 := b.Param("c2.bias", []int64{64}, modelgen.Init{Std: 0.1})
	h = b.Op("Conv", []string{h, w2, b2})
	tok := b.Op("Transpose", []string{b.Op("Reshape", []string{h, b.Ints(2, 64, 144)})}, modelgen.AttrInts("perm", 0, 2, 1)) // [2,144,64]
	// Linear's [out, in] weight read through a Transpose
	wm := b.Op("Transpose", []string{b.Param("lin.weight", []int64{96, 64}, modelgen.Init{Std: 0.12})}, modelgen.AttrInts("perm", 1, 0))
	bm := b.Param("lin.bias", []int64{96}, modelgen.Init{Std: 0.1})
	y := b.Op("Add", []string{b.Op("MatMul", []string{tok, wm}), bm}) // [2,144,96]
	att := b.Op("MatMul", []string{y, b.Op("Transpose", []string{y}, modelgen.AttrInts("perm", 0, 2, 1))})
	att = b.Op("Softmax", []string{b.Op("Mul", []string{att, b.Scalar(0.1)})}, modelgen.AttrInt("axis", -1))
	y = b.Op("MatMul", []string{att, y})
	flat := b.Op("Reshape", []string{y, b.Ints(288, 96)})
	wg := b.Param("gemm.weight", []int64{80, 96}, modelgen.Init{Std: 0.1})
	bg := b.Param("gemm.bias", []int64{80}, modelgen.Init{Std: 0.1})
	out := b.Op("Gemm", []string{flat, wg, bg}, modelgen.AttrInt("transB", 1))
	b.Output(out, "y", onnxpb.Float, 288, 80)
	path := filepath.Join(dir, "model.onnx")
	if err := onnxpb.WriteFile(path, b.Model(17), &onnxpb.ExternalData{File: onnxpb.LegacyExternalFile}); err != nil {
		t.Fatal(err)
	}
	return path
}

func gaussian(r *rand.Rand, shape ...int64) ort.Tensor {
	d := make([]float32, ort.Elems(shape))
	for i := range d {
		d[i] = float32(r.NormFloat64())
	}
	return ort.Tensor{Shape: shape, Data: d}
}

// writeQuantized quantizes the model at src and writes it to dir.
func writeQuantized(t *testing.T, src, dir string, o rewrite.QuantizeOptions) (string, rewrite.QuantizeReport) {
	t.Helper()
	m := testenv.ReadModel(t, src)
	q, err := rewrite.Quantize(m, filepath.Dir(src), o)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "model.onnx")
	if err := onnxpb.WriteFile(path, q.Model, &onnxpb.ExternalData{File: "weights.int8"}); err != nil {
		t.Fatal(err)
	}
	if err := q.Err(); err != nil {
		t.Fatal(err)
	}
	return path, q.Report
}

func TestQuantizeLayers(t *testing.T) {
	testenv.RequireORT(t)
	src := layerModel(t, t.TempDir())
	r := rand.New(rand.NewPCG(1, 2))
	feeds := [][]ort.Tensor{{gaussian(r, 2, 32, 12, 12)}, {gaussian(r, 2, 32, 12, 12)}, {gaussian(r, 2, 32, 12, 12)}}
	check := feeds[0]
	o := ort.Options{IntraOpThreads: 1}

	m := testenv.ReadModel(t, src)
	values := rewrite.ConvValues(m)
	if len(values) != 4 {
		t.Fatalf("ConvValues = %v, want the inputs and outputs of the 2 Convs", values)
	}
	ranges, err := rewrite.Calibrate(t.Context(), src, values, feeds, o)
	if err != nil {
		t.Fatal(err)
	}
	for v, rg := range ranges {
		if !(rg.Min < 0 && rg.Max > 0) {
			t.Errorf("range of %s = %+v, want one around 0 (Gaussian inputs)", v, rg)
		}
	}

	for _, tc := range []struct {
		name   string
		o      rewrite.QuantizeOptions
		static int
	}{
		{"dynamic", rewrite.QuantizeOptions{MatMul: true, Conv: true}, 0},
		{"calibrated", rewrite.QuantizeOptions{MatMul: true, Conv: true, Ranges: ranges}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, rep := writeQuantized(t, src, t.TempDir(), tc.o)
			t.Log(rep)
			if rep.MatMul != 1 || rep.Gemm != 1 || rep.BiasFused != 1 || rep.ConvStat != tc.static || rep.ConvDyn != 2-tc.static {
				t.Errorf("report %+v: want 1 MatMul (bias folded), 1 Gemm, %d calibrated and %d dynamic Convs", rep, tc.static, 2-tc.static)
			}
			q := testenv.ReadModel(t, path)
			if n := count(q, "Conv") + count(q, "Gemm"); n != 0 {
				t.Errorf("%d float Conv/Gemm nodes left", n)
			}
			if n := count(q, "Transpose"); n != 2 {
				t.Errorf("%d Transpose nodes left, want 2 (the weight's is gone)", n)
			}
			if n := count(q, "MatMul"); n != 2 {
				t.Errorf("%d MatMul nodes left, want the 2 of the attention (activation × activation)", n)
			}
			for _, init := range q.Graph.Initializer {
				if init.DataType == onnxpb.Float && init.NumElements() > 100 {
					t.Errorf("float weight %s %v left", init.Name, init.Dims)
				}
				if init.DataLocation == onnxpb.LocationExternal {
					if loc, _ := init.External("location"); loc != "weights.int8" {
						t.Errorf("%s reads %s, want the model's own weights.int8", init.Name, loc)
					}
				}
			}
			if rep.WeightBytesAfter*3 > rep.WeightBytesBefore {
				t.Errorf("weights %d → %d bytes: not about a quarter", rep.WeightBytesBefore, rep.WeightBytesAfter)
			}
			e, err := rewrite.Compare(t.Context(), src, path, check, o)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("relative RMS error %.4f, max abs %.4f", e.RelRMS, e.MaxAbs)
			if e.RelRMS > int8Tol || e.RelRMS == 0 {
				t.Errorf("relative RMS error %g, want in (0, %g]", e.RelRMS, int8Tol)
			}
		})
	}
	// a calibrated range far too narrow clips, and the check sees it
	narrow := map[string]rewrite.Range{}
	for v, rg := range ranges {
		narrow[v] = rewrite.Range{Min: rg.Min / 20, Max: rg.Max / 20}
	}
	path, _ := writeQuantized(t, src, t.TempDir(), rewrite.QuantizeOptions{Conv: true, Ranges: narrow})
	e, err := rewrite.Compare(t.Context(), src, path, check, o)
	if err != nil {
		t.Fatal(err)
	}
	if e.RelRMS < 5*int8Tol {
		t.Errorf("ranges 20× too narrow give a relative error of only %g", e.RelRMS)
	}
}

// TestQuantizeKeeps checks the layers Quantize must leave in float32.
func TestQuantizeKeeps(t *testing.T) {
	b := modelgen.NewBuilder(3, onnxpb.Float)
	x := b.Input("x", onnxpb.Float, 1, 16, 8, 8)
	w1 := b.Param("in.weight", []int64{32, 16, 3, 3}, modelgen.Init{Std: 0.1}) // reads the graph input
	h := b.Op("Conv", []string{x, w1})
	w2 := b.Param("small.weight", []int64{32, 4, 3, 3}, modelgen.Init{Std: 0.1}) // reduction 36 < 64
	h2 := b.Op("Conv", []string{h, w2}, modelgen.AttrInt("group", 8))
	w3 := b.Param("out.weight", []int64{4, 32, 3, 3}, modelgen.Init{Std: 0.1}) // writes the graph output
	b.Graph().Nodes = append(b.Graph().Nodes, &onnxpb.Node{Name: "out", OpType: "Conv", Input: []string{h2, w3}, Output: []string{"y"}})
	b.Output("y", "y", onnxpb.Float, 1, 4, 4, 4)
	m := b.Model(17)
	q, err := rewrite.Quantize(m, t.TempDir(), rewrite.QuantizeOptions{MatMul: true, Conv: true})
	if err != nil {
		t.Fatal(err)
	}
	if q.Report.Changed() || len(q.Report.Kept) != 3 {
		t.Fatalf("report %+v: want nothing quantized and 3 kept", q.Report)
	}
	for _, want := range []string{"reads a graph input", "reduction 36 < 64", "writes a graph output"} {
		if !strings.Contains(strings.Join(q.Report.Kept, "\n"), want) {
			t.Errorf("no layer kept because it %s: %v", want, q.Report.Kept)
		}
	}
}

// TestBuildInt8 quantizes the reference UNet and VAE decoder after the
// default rewrites, checks the entry is self-contained and cached, and
// measures the outputs against the original.
func TestBuildInt8(t *testing.T) {
	dir := testenv.TinyReferenceModel(t)
	testenv.RequireORT(t)
	cache := t.TempDir()
	rs := []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}
	plan := rewrite.Plan{Rewrites: rs, Int8: &rewrite.QuantizeOptions{MatMul: true, Conv: true, MinReduction: 32}}
	for _, c := range []string{"unet", "vae_decoder"} {
		src := filepath.Join(dir, c, "model.onnx")
		res, err := rewrite.Build(src, plan, cache)
		if err != nil {
			t.Fatal(err)
		}
		if !res.Changed() || res.Cached || res.Path == src {
			t.Fatalf("%s: changed %v, cached %v, path %s", c, res.Changed(), res.Cached, res.Path)
		}
		t.Logf("%s: %v; %v", c, res.Rewrites, res.Int8)
		ents, err := os.ReadDir(filepath.Dir(res.Path))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if got := strings.Join(names, " "); got != "build.json model.onnx weights.bin" {
			t.Errorf("%s: entry holds %q, want build.json model.onnx weights.bin", c, got)
		}
		e, err := rewrite.Compare(t.Context(), src, res.Path, randomInputs(t, src), ort.Options{IntraOpThreads: 1})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: relative RMS error %.4f, max abs %.4f", c, e.RelRMS, e.MaxAbs)
		// random weights, 8×8 latents: an order of magnitude, the real
		// figures are measured on trained models (BENCHMARKS.md)
		if e.RelRMS > 0.1 || e.RelRMS == 0 {
			t.Errorf("%s: relative RMS error %g, want in (0, 0.1]", c, e.RelRMS)
		}
		if err := res.MarkChecked(map[string]float64{"rel_rms": e.RelRMS}); err != nil {
			t.Fatal(err)
		}
		again, err := rewrite.Build(src, plan, cache)
		if err != nil {
			t.Fatal(err)
		}
		if !again.Cached || again.Path != res.Path || again.Checked["rel_rms"] != e.RelRMS || again.Int8.String() != res.Int8.String() {
			t.Errorf("%s: second Build: cached %v, path %s, checked %v", c, again.Cached, again.Path, again.Checked)
		}
		other, err := rewrite.Build(src, rewrite.Plan{Rewrites: rs, Int8: &rewrite.QuantizeOptions{MatMul: true, MinReduction: 32}}, cache)
		if err != nil {
			t.Fatal(err)
		}
		if other.Cached || other.Path == res.Path {
			t.Errorf("%s: other options reused the entry", c)
		}
	}
}

// TestQuantizeStaticOnly keeps the convolutions without ranges in float32
// instead of writing the slow ConvInteger form, and quantizes the one
// that has them.
func TestQuantizeStaticOnly(t *testing.T) {
	src := layerModel(t, t.TempDir())
	values := rewrite.ConvValues(testenv.ReadModel(t, src))
	if len(values) < 3 {
		t.Fatalf("conv values %v", values)
	}
	// ranges for the first convolution only
	rs := map[string]rewrite.Range{values[0]: {Min: -3, Max: 3}, values[1]: {Min: -4, Max: 4}}
	_, rep := writeQuantized(t, src, t.TempDir(), rewrite.QuantizeOptions{MatMul: true, Conv: true, StaticOnly: true, Ranges: rs})
	if rep.ConvStat != 1 || rep.ConvDyn != 0 {
		t.Errorf("static-only: %v, want one calibrated conv and no dynamic one", rep)
	}
	if !strings.Contains(strings.Join(rep.Kept, "\n"), "no calibrated range") {
		t.Errorf("kept %q, want the conv without ranges", rep.Kept)
	}
}

// TestCachedRanges round-trips calibration ranges through the cache,
// keyed by the model and the calibration's ID.
func TestCachedRanges(t *testing.T) {
	src := layerModel(t, t.TempDir())
	cache := t.TempDir()
	if _, ok := rewrite.CachedRanges(src, "a", cache); ok {
		t.Fatal("ranges in an empty cache")
	}
	rs := map[string]rewrite.Range{"x": {Min: -1, Max: 2.5}}
	if err := rewrite.SaveRanges(src, "a", cache, rs); err != nil {
		t.Fatal(err)
	}
	got, ok := rewrite.CachedRanges(src, "a", cache)
	if !ok || got["x"] != rs["x"] || len(got) != 1 {
		t.Errorf("cached ranges %v %v, want %v", got, ok, rs)
	}
	if _, ok := rewrite.CachedRanges(src, "b", cache); ok {
		t.Error("ranges found under another calibration ID")
	}
}
