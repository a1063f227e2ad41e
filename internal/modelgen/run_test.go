package modelgen

import (
	"math"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// openComponent opens dir/component/model.onnx in ONNX Runtime with the
// inputs and outputs read by onnxpb.ReadIO.
func openComponent(t *testing.T, dir, component string) *ort.Session {
	t.Helper()
	path := filepath.Join(dir, component, ModelFile)
	io, err := onnxpb.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	conv := func(vs []onnxpb.ValueInfo) []ort.IOInfo {
		var out []ort.IOInfo
		for _, v := range vs {
			info := ort.IOInfo{Name: v.Name, DType: ort.DType(v.ElemType)}
			for _, d := range v.Dims {
				if d.Param != "" || d.Value <= 0 {
					info.Shape = append(info.Shape, -1)
				} else {
					info.Shape = append(info.Shape, d.Value)
				}
			}
			out = append(out, info)
		}
		return out
	}
	s, err := ort.Open(t.Context(), path, conv(io.Inputs), conv(io.Outputs), ort.Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// stats returns the mean absolute value and the standard deviation of x,
// failing the test on NaN or Inf.
func stats(t *testing.T, what string, x []float32) (meanAbs, std float64) {
	t.Helper()
	var s, s2, a float64
	for i, v := range x {
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			t.Fatalf("%s: element %d is %v", what, i, v)
		}
		s += f
		s2 += f * f
		a += math.Abs(f)
	}
	n := float64(len(x))
	return a / n, math.Sqrt(math.Max(s2/n-(s/n)*(s/n), 0))
}

// gauss returns n deterministic standard-normal values.
func gauss(seed uint64, n int) []float32 {
	r := splitmix{state: seed}
	out := make([]float32, n)
	for i := range out {
		u1, u2 := r.float64(), r.float64()
		out[i] = float32(math.Sqrt(-2*math.Log(1-u1)) * math.Cos(2*math.Pi*u2))
	}
	return out
}

// promptIDs returns [BOS, a few tokens, EOS, EOS…] padded to 77, for a
// vocabulary of size vocab, and the EOS position.
func promptIDs(vocab, n int) ([]int32, int) {
	ids := make([]int32, 77)
	ids[0] = int32(vocab - 2)
	for i := 1; i <= n; i++ {
		ids[i] = int32(600 + 7*i)
	}
	for i := n + 1; i < 77; i++ {
		ids[i] = int32(vocab - 1)
	}
	return ids, n + 1
}

type variantCase struct {
	name string
	opt  Options
}

var variants = []variantCase{
	{"default", Options{}},
	{"int64-ids", Options{IDs: onnxpb.Int64}},
	{"timestep-int64-scalar", Options{Timestep: onnxpb.Int64, TimestepShape: TimestepScalar}},
	{"timestep-one", Options{TimestepShape: TimestepOne}},
	{"timestep-float16", Options{Timestep: onnxpb.Float16}},
	{"fp16", Options{FP16: true}},
	{"latent-parameters", Options{LatentParameters: true, ExternalFile: onnxpb.OptimumExternalFile}},
	{"batch1", Options{Batch: 1}},
	{"baddbmm", Options{Attention: Baddbmm}},
}

// TestTinyRuns writes the tiny model folder in each variant and runs every
// component through ONNX Runtime, checking shapes and finite, sane outputs.
func TestTinyRuns(t *testing.T) {
	testenv.RequireORT(t)
	cfg := Tiny()
	vocab := GenerateVocabulary(0).Size()
	for _, tc := range variants {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, cfg, tc.opt); err != nil {
				t.Fatal(err)
			}
			batch := int64(2)
			if tc.opt.Batch > 0 {
				batch = int64(tc.opt.Batch)
			}

			// Text encoder: shapes, and pooler_output = last_hidden_state at EOS.
			te := openComponent(t, dir, TextEncoderDir)
			var ids []int32
			eos := make([]int, batch)
			for i := range eos {
				row, p := promptIDs(vocab, 3+4*i)
				ids, eos[i] = append(ids, row...), p
			}
			h := int64(cfg.Text.Hidden)
			out := []ort.Tensor{{Shape: []int64{batch, 77, h}}, {Shape: []int64{batch, h}}}
			if err := te.Run(t.Context(), []ort.Tensor{{Shape: []int64{batch, 77}, Data: ids}}, out); err != nil {
				t.Fatal(err)
			}
			last, pooled := out[0].Data.([]float32), out[1].Data.([]float32)
			if _, std := stats(t, "last_hidden_state", last); std < 0.3 || std > 3 {
				t.Errorf("last_hidden_state std %.3g outside [0.3, 3]", std)
			}
			for i := range eos {
				row := last[(int64(i)*77+int64(eos[i]))*h:][:h]
				for j := range row {
					if d := math.Abs(float64(row[j] - pooled[int64(i)*h+int64(j)])); d > 1e-6 {
						t.Fatalf("row %d: pooler_output[%d] = %v, last_hidden_state at EOS %d = %v", i, j, pooled[int64(i)*h+int64(j)], eos[i], row[j])
					}
				}
			}

			// UNet at 64×64 (latents 8×8).
			un := openComponent(t, dir, UNetDir)
			sample := gauss(1, int(batch*4*8*8))
			ts := []float32{981, 501}[:batch]
			tsShape := []int64{batch}
			switch tc.opt.TimestepShape {
			case TimestepScalar:
				ts, tsShape = ts[:1], nil
			case TimestepOne:
				ts, tsShape = ts[:1], []int64{1}
			}
			var tsData any = ts
			if tc.opt.Timestep == onnxpb.Int64 {
				tsData = []int64{int64(ts[0]), int64(ts[len(ts)-1])}[:len(ts)]
			}
			uout := []ort.Tensor{{Shape: []int64{batch, 4, 8, 8}}}
			err := un.Run(t.Context(), []ort.Tensor{
				{Shape: []int64{batch, 4, 8, 8}, Data: sample},
				{Shape: tsShape, Data: tsData},
				{Shape: []int64{batch, 77, h}, Data: last},
			}, uout)
			if err != nil {
				t.Fatal(err)
			}
			if _, std := stats(t, "out_sample", uout[0].Data.([]float32)); std < 0.3 || std > 3 {
				t.Errorf("out_sample std %.3g outside [0.3, 3]", std)
			}

			// VAE decoder: 8× upscaling.
			dec := openComponent(t, dir, VAEDecoderDir)
			dout := []ort.Tensor{{Shape: []int64{batch, 3, 64, 64}}}
			if err := dec.Run(t.Context(), []ort.Tensor{{Shape: []int64{batch, 4, 8, 8}, Data: sample}}, dout); err != nil {
				t.Fatal(err)
			}
			if _, std := stats(t, "decoded sample", dout[0].Data.([]float32)); std < 0.05 || std > 3 {
				t.Errorf("decoded sample std %.3g outside [0.05, 3]", std)
			}

			// VAE encoder: 8× downscaling.
			enc := openComponent(t, dir, VAEEncoderDir)
			lc := int64(4)
			if tc.opt.LatentParameters {
				lc = 8
			}
			eout := []ort.Tensor{{Shape: []int64{batch, lc, 8, 8}}}
			if err := enc.Run(t.Context(), []ort.Tensor{{Shape: []int64{batch, 3, 64, 64}, Data: dout[0].Data}}, eout); err != nil {
				t.Fatal(err)
			}
			stats(t, "latents", eout[0].Data.([]float32))
		})
	}
}
