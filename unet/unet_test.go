package unet_test

import (
	"errors"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/unet"
)

func TestPredictMatchesReference(t *testing.T) {
	ref := testenv.LoadTinyReference(t)
	m := testenv.OpenReference(t, unet.Open, "unet")
	if m.InChannels() != 4 || m.CrossDim() != 32 {
		t.Errorf("InChannels %d, CrossDim %d", m.InChannels(), m.CrossDim())
	}
	// the pipeline batches [uncond, cond]; the encoder calls are cond first
	calls := ref.ORT.TextEncoderCalls
	ctxData := append(append([]float32(nil), calls[1].LastHiddenState...), calls[0].LastHiddenState...)
	enc := tensor.New(tensor.WithShape(2, 77, 32), tensor.WithBacking(ctxData))
	for _, i := range []int{0, 7, len(ref.ORT.Steps) - 1} {
		st := ref.ORT.Steps[i]
		sample := tensor.New(tensor.WithShape(2, 4, 8, 8), tensor.WithBacking(append([]float32(nil), st.SampleInput...)))
		got, err := m.Predict(t.Context(), sample, []float64{float64(st.TimestepInput[0])}, enc)
		if err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(got.Data().([]float32), st.NoisePred); d > 1e-4 {
			t.Errorf("step %d: noise prediction differs from the reference by %g", i, d)
		}
		// per-item timesteps (the reference model takes timestep [batch])
		got2, err := m.Predict(t.Context(), sample, []float64{float64(st.TimestepInput[0]), float64(st.TimestepInput[0])}, enc)
		if err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(got2.Data().([]float32), got.Data().([]float32)); d != 0 {
			t.Errorf("step %d: per-item timesteps change the result by %g", i, d)
		}
	}
	bad := tensor.New(tensor.WithShape(2, 3, 8, 8), tensor.WithBacking(make([]float32, 2*3*64)))
	if _, err := m.Predict(t.Context(), bad, []float64{1}, enc); !errors.Is(err, unet.ErrInput) {
		t.Errorf("Predict(3 channels) = %v, want ErrInput", err)
	}
}
