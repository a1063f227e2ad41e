package rewrite_test

import (
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// tol is the largest output change a rewrite may cause (issue 11).
const tol = 1e-4

func count(m *onnxpb.Model, op string) int {
	n := 0
	for _, x := range m.Graph.Nodes {
		if x.OpType == op {
			n++
		}
	}
	return n
}

// randomInputs makes inputs for a component of a model folder: UNet
// [2,4,8,8] latents, VAE decoder [1,4,8,8] latents, text encoder ids.
func randomInputs(t *testing.T, path string) []ort.Tensor {
	t.Helper()
	ins, _, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(7, 11))
	randn := func(n int64) []float32 {
		d := make([]float32, n)
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		return d
	}
	var in []ort.Tensor
	for _, v := range ins {
		var shape []int64
		switch v.Name {
		case "sample":
			shape = []int64{2, 4, 8, 8}
		case "latent_sample":
			shape = []int64{1, 4, 8, 8}
		case "timestep":
			shape = v.Shape
			if len(shape) == 1 && shape[0] < 0 {
				shape = []int64{2}
			}
			in = append(in, ort.Tensor{Shape: shape, Data: []float32{501, 501}[:ort.Elems(shape)]})
			continue
		case "encoder_hidden_states":
			shape = []int64{2, 77, v.Shape[2]}
		default:
			t.Fatalf("no random input for %v", v)
		}
		in = append(in, ort.Tensor{Shape: shape, Data: randn(ort.Elems(shape))})
	}
	return in
}

// TestBaddbmmReference rewrites the reference UNet and VAE decoder
// (exported with torch 1.13, so with the real artefact) and proves the
// outputs unchanged.
func TestBaddbmmReference(t *testing.T) {
	dir := testenv.TinyReferenceModel(t)
	for _, tc := range []struct {
		component string
		rs        []rewrite.Rewrite
	}{
		{"unet", []rewrite.Rewrite{rewrite.Baddbmm}},
		{"unet", []rewrite.Rewrite{rewrite.Baddbmm, rewrite.FoldScale}},
		{"vae_decoder", []rewrite.Rewrite{rewrite.Baddbmm}},
		{"unet", []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}},
		{"vae_decoder", []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}},
	} {
		t.Run(tc.component+"/"+string(tc.rs[len(tc.rs)-1]), func(t *testing.T) {
			src := filepath.Join(dir, tc.component, "model.onnx")
			orig := testenv.ReadModel(t, src)
			m := testenv.ReadModel(t, src)
			rep, err := rewrite.Apply(m, tc.rs...)
			if err != nil {
				t.Fatal(err)
			}
			// one baddbmm per attention, i.e. per Softmax
			if got, want := rep.Sites[rewrite.Baddbmm], count(orig, "Softmax"); got != want || want == 0 {
				t.Errorf("baddbmm sites = %d, want %d (one per Softmax)", got, want)
			}
			if slices.Contains(tc.rs, rewrite.MHA) {
				if got, want := rep.Sites[rewrite.MHA], count(orig, "Softmax"); got != want {
					t.Errorf("mha sites = %d, want %d (one per Softmax)", got, want)
				}
				if got := count(m, "Softmax"); got != 0 {
					t.Errorf("%d Softmax left after fusing attention", got)
				}
			}
			if len(rep.Refused) > 0 {
				t.Errorf("refused: %v", rep.Refused)
			}
			if got := count(m, "ConstantOfShape"); got != count(orig, "ConstantOfShape")-rep.Sites[rewrite.Baddbmm] {
				t.Errorf("%d ConstantOfShape left of %d", got, count(orig, "ConstantOfShape"))
			}
			if rep.NodesAfter >= rep.NodesBefore {
				t.Errorf("nodes %d → %d", rep.NodesBefore, rep.NodesAfter)
			}
			t.Log(rep)

			testenv.RequireORT(t)
			res, err := rewrite.Prepare(src, tc.rs, "")
			if err != nil {
				t.Fatal(err)
			}
			if res.Data == nil || res.Path != "" {
				t.Fatalf("without a cache Prepare gave path %q and %d bytes", res.Path, len(res.Data))
			}
			d, err := rewrite.Verify(t.Context(), res, randomInputs(t, src), ort.Options{IntraOpThreads: 1})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("max difference %g", d)
			if d > tol {
				t.Errorf("rewritten %s differs by %g > %g", tc.component, d, tol)
			}
		})
	}
}

// TestGenerated rewrites the generated tiny model in both attention forms.
func TestGenerated(t *testing.T) {
	dirs := map[modelgen.AttentionForm]string{}
	for _, f := range []modelgen.AttentionForm{modelgen.Baddbmm, modelgen.Efficient} {
		dirs[f] = t.TempDir()
		if err := modelgen.Write(dirs[f], modelgen.Tiny(), modelgen.Options{Seed: 5, Attention: f}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		form    modelgen.AttentionForm
		rs      []rewrite.Rewrite
		changed bool
	}{
		{modelgen.Baddbmm, []rewrite.Rewrite{rewrite.Baddbmm}, true},
		{modelgen.Baddbmm, []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}, true},
		{modelgen.Efficient, []rewrite.Rewrite{rewrite.Baddbmm}, false},
		{modelgen.Efficient, []rewrite.Rewrite{rewrite.MHA}, true},
	} {
		t.Run(tc.form.String()+"/"+string(tc.rs[len(tc.rs)-1]), func(t *testing.T) {
			dir := dirs[tc.form]
			for _, c := range []string{"unet", "vae_decoder"} {
				src := filepath.Join(dir, c, "model.onnx")
				res, err := rewrite.Prepare(src, tc.rs, filepath.Join(t.TempDir(), "cache"))
				if err != nil {
					t.Fatal(err)
				}
				if res.Changed() != tc.changed {
					t.Fatalf("%s: changed = %v (%v), want %v", c, res.Changed(), res.Report, tc.changed)
				}
				if len(res.Report.Refused) > 0 {
					t.Errorf("%s: refused: %v", c, res.Report.Refused)
				}
				if !tc.changed {
					if res.Path != src {
						t.Errorf("%s: unchanged model at %q, want the source", c, res.Path)
					}
					continue
				}
				testenv.RequireORT(t)
				d, err := rewrite.Verify(t.Context(), res, randomInputs(t, src), ort.Options{IntraOpThreads: 1})
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: %v, max difference %g", c, res.Report, d)
				if d > tol {
					t.Errorf("%s: rewritten model differs by %g > %g", c, d, tol)
				}
			}
		})
	}
}

// TestCache checks that a second Prepare reuses the first one's entry, and
// that the user's folder is left as it was.
func TestCache(t *testing.T) {
	dir := t.TempDir()
	if err := modelgen.Write(dir, modelgen.Tiny(), modelgen.Options{Seed: 5, Attention: modelgen.Baddbmm}); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "unet", "model.onnx")
	before := listDir(t, filepath.Dir(src))
	cache := t.TempDir()
	rs := []rewrite.Rewrite{rewrite.Baddbmm}
	first, err := rewrite.Prepare(src, rs, cache)
	if err != nil {
		t.Fatal(err)
	}
	if first.Cached || first.Path == src || first.Path == "" {
		t.Fatalf("first Prepare: cached %v, path %q", first.Cached, first.Path)
	}
	if _, err := os.Stat(filepath.Join(filepath.Dir(first.Path), onnxpb.LegacyExternalFile)); err != nil {
		t.Errorf("no link to the external data beside the rewritten model: %v", err)
	}
	if err := first.MarkVerified(3e-7); err != nil {
		t.Fatal(err)
	}
	second, err := rewrite.Prepare(src, rs, cache)
	if err != nil {
		t.Fatal(err)
	}
	if !second.Cached || second.Path != first.Path || second.Verified != 3e-7 || second.Report.String() != first.Report.String() {
		t.Errorf("second Prepare: cached %v, path %q (first %q), verified %g, report %v (first %v)",
			second.Cached, second.Path, first.Path, second.Verified, second.Report, first.Report)
	}
	// another rewrite set is another entry
	third, err := rewrite.Prepare(src, []rewrite.Rewrite{rewrite.Baddbmm, rewrite.FoldScale}, cache)
	if err != nil {
		t.Fatal(err)
	}
	if third.Cached || third.Path == first.Path {
		t.Errorf("another rewrite set reused the entry %q", third.Path)
	}
	if after := listDir(t, filepath.Dir(src)); after != before {
		t.Errorf("the model folder changed:\n%s\nwas\n%s", after, before)
	}
}

func listDir(t *testing.T, dir string) string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := ""
	for _, e := range es {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		s += e.Name() + " " + info.ModTime().String() + "\n"
	}
	return s
}

// TestRefused builds near misses of the artefact and checks that each is
// left unchanged and reported.
func TestRefused(t *testing.T) {
	f32 := func(name string, v float32) *onnxpb.Tensor {
		b := make([]byte, 4)
		u := mathFloat32bits(v)
		b[0], b[1], b[2], b[3] = byte(u), byte(u>>8), byte(u>>16), byte(u>>24)
		return &onnxpb.Tensor{Name: name, DataType: onnxpb.Float, RawData: b}
	}
	build := func(zero float32) *onnxpb.Model {
		return &onnxpb.Model{
			IRVersion:    7,
			OpsetImports: []onnxpb.OperatorSet{{Version: 14}},
			Graph: &onnxpb.Graph{
				Name:        "g",
				Initializer: []*onnxpb.Tensor{f32("scale", 0.5), f32("zero", zero)},
				Input:       []onnxpb.ValueInfo{{Name: "q", ElemType: onnxpb.Float}, {Name: "k", ElemType: onnxpb.Float}, {Name: "shape", ElemType: onnxpb.Int64}},
				Output:      []onnxpb.ValueInfo{{Name: "p", ElemType: onnxpb.Float}},
				Nodes: []*onnxpb.Node{
					{Name: "cat", OpType: "Concat", Input: []string{"shape"}, Output: []string{"sh"}, Attribute: []*onnxpb.Attribute{{Name: "axis", Type: onnxpb.AttrInt}}},
					{Name: "cos", OpType: "ConstantOfShape", Input: []string{"sh"}, Output: []string{"e"}},
					{Name: "mm", OpType: "MatMul", Input: []string{"q", "k"}, Output: []string{"s"}},
					{Name: "sc", OpType: "Mul", Input: []string{"s", "scale"}, Output: []string{"s2"}},
					{Name: "z", OpType: "Mul", Input: []string{"e", "zero"}, Output: []string{"z0"}},
					{Name: "add", OpType: "Add", Input: []string{"z0", "s2"}, Output: []string{"a"}},
					{Name: "sm", OpType: "Softmax", Input: []string{"a"}, Output: []string{"p"}},
				},
			},
		}
	}
	m := build(0)
	rep, err := rewrite.Apply(m, rewrite.Baddbmm)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Sites[rewrite.Baddbmm] != 1 || rep.NodesAfter != 3 {
		t.Errorf("exact artefact: %v, want 1 site and 3 nodes left (MatMul, Mul, Softmax)", rep)
	}
	m = build(0.5)
	rep, err = rewrite.Apply(m, rewrite.Baddbmm)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Changed() || len(rep.Refused) != 1 || len(m.Graph.Nodes) != 7 {
		t.Errorf("Mul by 0.5: %v, refused %v, want no change and one refusal", rep, rep.Refused)
	}
	if _, err := rewrite.Apply(build(0), "nonsense"); !errors.Is(err, rewrite.ErrUnknown) {
		t.Errorf("unknown rewrite: err = %v, want ErrUnknown", err)
	}
}

func mathFloat32bits(f float32) uint32 { return math.Float32bits(f) }

// TestVerifyDetects checks that Verify sees a graph change that alters the
// outputs: the attention scale of the reference UNet doubled.
func TestVerifyDetects(t *testing.T) {
	testenv.RequireORT(t)
	src := filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx")
	m := testenv.ReadModel(t, src)
	for _, n := range m.Graph.Nodes {
		if n.OpType == "Softmax" {
			n.Attribute = nil // axis -1 → opset 13+ default -1: same
		}
	}
	changed := testenv.DoubleAttentionScales(t, m)
	data, err := onnxpb.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	res := &rewrite.Result{Source: src, Data: data, ExternalDir: filepath.Dir(src)}
	d, err := rewrite.Verify(t.Context(), res, randomInputs(t, src), ort.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d scales doubled: max difference %g", changed, d)
	if d <= tol {
		t.Errorf("Verify saw a difference of %g after doubling the attention scales", d)
	}
}
