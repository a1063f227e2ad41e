package unet_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/unet"
)

// TestStepCacheModel splits the reference UNet for step caching and
// replays the reference run's UNet calls: the full model gives diffusers'
// predictions, the shallow model on the same call's features gives them
// again, and on features of an earlier call it gives something else; bad
// features and an unsplit model are refused; warm-up runs both models.
func TestStepCacheModel(t *testing.T) {
	testenv.RequireORT(t)
	ref := testenv.LoadTinyReference(t)
	path := filepath.Join(testenv.TinyReferenceModel(t), "unet", "model.onnx")
	sig, err := unet.ReadSignature(path)
	if err != nil {
		t.Fatal(err)
	}
	o := session.Options{Threads: 1, RewriteCache: t.TempDir(), Rewrites: []string{"baddbmm", "mha"}}
	if _, err := sig.OpenStepCache(t.Context(), o, unet.StepCache{Interval: 0}); err == nil {
		t.Error("interval 0 accepted")
	}
	m, err := sig.OpenStepCache(t.Context(), o, unet.StepCache{Interval: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.StepCacheInterval() != 2 || !strings.Contains(m.Rewrites, fmt.Sprintf("step cache: branch %d ", unet.DefaultStepCacheBranch)) || !strings.Contains(m.Rewrites, "baddbmm") {
		t.Errorf("interval %d, load report %q", m.StepCacheInterval(), m.Rewrites)
	}
	calls := ref.ORT.TextEncoderCalls
	enc := tensor.New(tensor.WithShape(2, 77, 32), tensor.WithBacking(append(append([]float32(nil), calls[1].LastHiddenState...), calls[0].LastHiddenState...)))
	var prev *tensor.Dense
	for _, i := range []int{0, 1, 10} {
		st := ref.ORT.Steps[i]
		sample := tensor.New(tensor.WithShape(2, 4, 8, 8), tensor.WithBacking(append([]float32(nil), st.SampleInput...)))
		ts := []float64{float64(st.TimestepInput[0])}
		pred, deep, err := m.PredictStep(t.Context(), sample, ts, enc, nil, nil, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if deep == nil || deep.Shape()[0] != 2 {
			t.Fatalf("step %d: features %v, want 2 rows", i, deep)
		}
		if d := testenv.MaxAbsDiff(pred.Data().([]float32), st.NoisePred); d > 1e-4 {
			t.Errorf("step %d: the full model differs from the reference by %g", i, d)
		}
		sh, none, err := m.PredictStep(t.Context(), sample, ts, enc, nil, nil, nil, deep)
		if err != nil || none != nil {
			t.Fatalf("step %d: shallow call: %v, features %v", i, err, none)
		}
		if d := testenv.MaxAbsDiff(sh.Data().([]float32), st.NoisePred); d > 1e-4 {
			t.Errorf("step %d: the shallow model on fresh features differs from the reference by %g", i, d)
		}
		if prev != nil {
			old, _, err := m.PredictStep(t.Context(), sample, ts, enc, nil, nil, nil, prev)
			if err != nil {
				t.Fatal(err)
			}
			if d := testenv.MaxAbsDiff(old.Data().([]float32), st.NoisePred); d < 1e-6 {
				t.Errorf("step %d: features of an earlier step change the prediction by only %g", i, d)
			}
		}
		prev = deep
	}
	one := tensor.New(tensor.WithShape(append([]int{1}, prev.Shape()[1:]...)...), tensor.WithBacking(prev.Data().([]float32)[:prev.Shape().TotalSize()/2]))
	sample := tensor.New(tensor.WithShape(2, 4, 8, 8), tensor.WithBacking(make([]float32, 2*4*64)))
	if _, _, err := m.PredictStep(t.Context(), sample, []float64{1}, enc, nil, nil, nil, one); !errors.Is(err, unet.ErrInput) {
		t.Errorf("features of 1 row for 2: %v, want ErrInput", err)
	}
	times, err := m.WarmUp(t.Context(), session.Warmup{Width: 64, Height: 64, MaxCalls: 2})
	if err != nil || len(times) < 2 {
		t.Errorf("warm-up: %v, %d calls", err, len(times))
	}
	plain, err := sig.Open(t.Context(), session.Options{Threads: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if _, _, err := plain.PredictStep(t.Context(), sample, []float64{1}, enc, nil, nil, nil, prev); !errors.Is(err, unet.ErrInput) {
		t.Errorf("features to an unsplit model: %v, want ErrInput", err)
	}
	if plain.StepCacheInterval() != 0 {
		t.Errorf("unsplit model's interval %d", plain.StepCacheInterval())
	}
}
