package rewrite_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/rewrite"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// runModel runs the model at path on in and returns its outputs.
func runModel(t *testing.T, path string, in []ort.Tensor) []ort.Tensor {
	t.Helper()
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{IntraOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	out := make([]ort.Tensor, len(outs))
	if err := s.Run(t.Context(), in, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestStepCacheSplit splits the reference UNet (diffusers' converter) and
// the generated one at each skip connection and proves the pieces exact:
// the full model's prediction is the original's, and the shallow model
// fed the full model's deep features gives the same prediction again.
func TestStepCacheSplit(t *testing.T) {
	testenv.RequireORT(t)
	gen := t.TempDir()
	if err := modelgen.Write(gen, modelgen.Tiny(), modelgen.Options{Seed: 5, Attention: modelgen.Baddbmm}); err != nil {
		t.Fatal(err)
	}
	for name, src := range map[string]string{
		"reference": filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx"),
		"generated": filepath.Join(gen, "unet", "model.onnx"),
	} {
		t.Run(name, func(t *testing.T) {
			in := randomInputs(t, src)
			want := runModel(t, src, in)[0].Data.([]float32)
			m := testenv.ReadModel(t, src)
			if _, _, rep, err := rewrite.SplitDeep(m, 1); err != nil || rep.Branches < 2 {
				t.Fatalf("split: %v, %v", rep, err)
			} else if _, _, _, err := rewrite.SplitDeep(testenv.ReadModel(t, src), rep.Branches+1); err == nil {
				t.Errorf("branch %d of %d accepted", rep.Branches+1, rep.Branches)
			}
			cache := t.TempDir()
			prev := 0
			for _, branch := range []int{1, 2, 3} {
				b, err := rewrite.Build(src, rewrite.Plan{Rewrites: []rewrite.Rewrite{rewrite.Baddbmm, rewrite.MHA}, StepCache: branch}, cache)
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("branch %d: %v", branch, b.Split)
				if b.ShallowPath == "" || b.Split.Branch != branch || b.Split.NodesShallow >= b.Split.NodesFull || (branch == 1 && b.Split.NodesShallow >= b.Split.NodesFull/2) {
					t.Fatalf("branch %d: shallow %q, %+v", branch, b.ShallowPath, b.Split)
				}
				if b.Split.NodesShallow <= prev {
					t.Errorf("branch %d has %d shallow nodes, branch %d had %d: a deeper cut must keep more", branch, b.Split.NodesShallow, branch-1, prev)
				}
				prev = b.Split.NodesShallow
				full := runModel(t, b.Path, in)
				if len(full) != 2 {
					t.Fatalf("full model has %d outputs, want the prediction and the features", len(full))
				}
				if d := testenv.MaxAbsDiff(want, full[0].Data.([]float32)); d > tol {
					t.Errorf("branch %d: full model differs from the original by %g", branch, d)
				}
				sh := runModel(t, b.ShallowPath, append(in, full[1]))
				if d := testenv.MaxAbsDiff(full[0].Data.([]float32), sh[0].Data.([]float32)); d > tol {
					t.Errorf("branch %d: shallow model with fresh features differs by %g", branch, d)
				}
				// with other features the shallow model must answer otherwise
				other := full[1]
				f := append([]float32(nil), other.Data.([]float32)...)
				for i := range f {
					f[i] *= 0.5
				}
				sh2 := runModel(t, b.ShallowPath, append(in, ort.Tensor{Shape: other.Shape, Data: f}))
				if d := testenv.MaxAbsDiff(full[0].Data.([]float32), sh2[0].Data.([]float32)); d < 1e-3 {
					t.Errorf("branch %d: halving the features changed the prediction by only %g", branch, d)
				}
			}
		})
	}
	// a graph without skip connections is refused
	m := testenv.ReadModel(t, filepath.Join(testenv.TinyReferenceModel(t), "vae_decoder", "model.onnx"))
	if _, _, _, err := rewrite.SplitDeep(m, 1); !errors.Is(err, rewrite.ErrNoSkips) {
		t.Errorf("VAE decoder split: %v, want ErrNoSkips", err)
	}
}
