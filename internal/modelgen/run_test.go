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
	s, err := ort.Open(t.Context(), path, ioInfos(io.Inputs), ioInfos(io.Outputs), testSessionOptions)
	return testenv.CloseAtEnd(t, s, err)
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

// runUNet makes one UNet call with a [batch] float32 timestep.
func runUNet(t *testing.T, s *ort.Session, sample []float32, ts float32, ehs []float32, batch, hw, seq, hidden int64) []float32 {
	t.Helper()
	tsv := make([]float32, batch)
	for i := range tsv {
		tsv[i] = ts
	}
	out := []ort.Tensor{{Shape: []int64{batch, 4, hw, hw}}}
	err := s.Run(t.Context(), []ort.Tensor{
		{Shape: []int64{batch, 4, hw, hw}, Data: sample},
		{Shape: []int64{batch}, Data: tsv},
		{Shape: []int64{batch, seq, hidden}, Data: ehs},
	}, out)
	if err != nil {
		t.Fatal(err)
	}
	return out[0].Data.([]float32)
}

// TestBaddbmmMatchesEfficient checks that the diffusers-converter attention
// form computes the same function with the same weights.
func TestBaddbmmMatchesEfficient(t *testing.T) {
	testenv.RequireORT(t)
	cfg := Tiny()
	eff, bad := t.TempDir(), t.TempDir()
	if err := Write(eff, cfg, Options{Seed: 3}); err != nil {
		t.Fatal(err)
	}
	if err := Write(bad, cfg, Options{Seed: 3, Attention: Baddbmm}); err != nil {
		t.Fatal(err)
	}
	const tol = 1e-4 // float32 reassociation over unit-scale activations
	sample := gauss(5, 2*4*16*16)
	ehs := gauss(6, 2*7*32)
	a := runUNet(t, openComponent(t, eff, UNetDir), sample, 501, ehs, 2, 16, 7, 32)
	b := runUNet(t, openComponent(t, bad, UNetDir), sample, 501, ehs, 2, 16, 7, 32)
	if d := maxAbsDiff(a, b); d > tol {
		t.Errorf("unet: baddbmm and efficient differ by %.3g (tolerance %g)", d, tol)
	}
	dec := func(dir string) []float32 {
		out := []ort.Tensor{{Shape: []int64{1, 3, 64, 64}}}
		if err := openComponent(t, dir, VAEDecoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: sample[:256]}}, out); err != nil {
			t.Fatal(err)
		}
		return out[0].Data.([]float32)
	}
	if d := maxAbsDiff(dec(eff), dec(bad)); d > tol {
		t.Errorf("vae decoder: baddbmm and efficient differ by %.3g (tolerance %g)", d, tol)
	}
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	m := 0.0
	for i := range a {
		m = math.Max(m, math.Abs(float64(a[i]-b[i])))
	}
	return m
}

// TestDenoiseLoopStaysFinite runs a 50-step DDIM loop with classifier-free
// guidance 7.5 on the tiny model, as a pipeline would, and checks that the
// latents and the decoded image stay finite and of sane magnitude.
func TestDenoiseLoopStaysFinite(t *testing.T) {
	testenv.RequireORT(t)
	cfg := Tiny()
	dir := t.TempDir()
	if err := Write(dir, cfg, Options{Seed: 11}); err != nil {
		t.Fatal(err)
	}
	vocab := GenerateVocabulary(0).Size()
	uncond, _ := promptIDs(vocab, 0)
	cond, _ := promptIDs(vocab, 6)
	te := openComponent(t, dir, TextEncoderDir)
	h := int64(cfg.Text.Hidden)
	out := []ort.Tensor{{Shape: []int64{2, 77, h}}, {Shape: []int64{2, h}}}
	if err := te.Run(t.Context(), []ort.Tensor{{Shape: []int64{2, 77}, Data: append(uncond, cond...)}}, out); err != nil {
		t.Fatal(err)
	}
	ehs := out[0].Data.([]float32)
	un := openComponent(t, dir, UNetDir)

	// scaled_linear betas as SD 1.x, DDIM (eta 0) with "leading" spacing.
	const steps, guidance = 50, 7.5
	ac := make([]float64, 1000)
	prod := 1.0
	for i := range ac {
		s := math.Sqrt(0.00085) + (math.Sqrt(0.012)-math.Sqrt(0.00085))*float64(i)/999
		prod *= 1 - s*s
		ac[i] = prod
	}
	const n = 4 * 8 * 8
	x := gauss(12, n)
	for i := steps - 1; i >= 0; i-- {
		ts := i*(1000/steps) + 1
		eps2 := runUNet(t, un, append(append([]float32{}, x...), x...), float32(ts), ehs, 2, 8, 77, h)
		a := ac[ts]
		aPrev := ac[0]
		if i > 0 {
			aPrev = ac[ts-1000/steps]
		}
		for j := range x {
			eps := float64(eps2[j]) + guidance*(float64(eps2[n+j])-float64(eps2[j]))
			x0 := (float64(x[j]) - math.Sqrt(1-a)*eps) / math.Sqrt(a)
			x[j] = float32(math.Sqrt(aPrev)*x0 + math.Sqrt(1-aPrev)*eps)
		}
		if testing.Verbose() && i%10 == 0 {
			var d []float32
			for j := 0; j < n; j++ {
				d = append(d, eps2[n+j]-eps2[j])
			}
			_, ds := stats(t, "cond-uncond", d)
			_, es := stats(t, "eps", eps2)
			_, xs := stats(t, "latents", x)
			t.Logf("step %d t=%d: eps std %.3g, cond-uncond std %.3g, latents std %.3g", steps-i, ts, es, ds, xs)
		}
		if _, std := stats(t, "latents", x); std > 50 {
			t.Fatalf("step %d (t=%d): latents std %.3g", steps-i, ts, std)
		}
	}
	_, std := stats(t, "final latents", x)
	t.Logf("final latents std %.3g", std)
	// The noise prediction is unit-scale but uncorrelated with the noise in
	// the latents (the weights are random), so the final latents are the
	// model's x0 prediction at small t: larger than a trained model's (about
	// 18 here), but bounded.
	if std < 0.05 || std > 40 {
		t.Errorf("final latents std %.3g outside [0.05, 40]", std)
	}
	scaled := make([]float32, n)
	for j := range x {
		scaled[j] = x[j] / float32(cfg.VAE.ScalingFactor)
	}
	img := []ort.Tensor{{Shape: []int64{1, 3, 64, 64}}}
	if err := openComponent(t, dir, VAEDecoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: scaled}}, img); err != nil {
		t.Fatal(err)
	}
	_, istd := stats(t, "image", img[0].Data.([]float32))
	t.Logf("decoded image std %.3g", istd)
	if istd > 10 {
		t.Errorf("decoded image std %.3g above 10", istd)
	}
}

// TestFP16MatchesFP32 checks that the float16 variant computes the same
// function as the float32 one (same seed: its weights are the float32 ones
// rounded), within half-precision error, for SD 1.x and for SD 2.x, whose
// upcast_attention computes the attention scores in float32 (both
// attention forms).
func TestFP16MatchesFP32(t *testing.T) {
	testenv.RequireORT(t)
	for _, tc := range []struct {
		cfg  Config
		form AttentionForm
	}{{Tiny(), Efficient}, {TinySD2(), Efficient}, {TinySD2(), Baddbmm}} {
		t.Run(tc.cfg.Name+"/"+tc.form.String(), func(t *testing.T) {
			f32, f16 := t.TempDir(), t.TempDir()
			if err := Write(f32, tc.cfg, Options{Seed: 4, Attention: tc.form}); err != nil {
				t.Fatal(err)
			}
			if err := Write(f16, tc.cfg, Options{Seed: 4, FP16: true, Attention: tc.form}); err != nil {
				t.Fatal(err)
			}
			cross := int64(tc.cfg.crossDim())
			sample := gauss(8, 2*4*16*16)
			ehs := gauss(9, int(2*7*cross))
			a := runUNet(t, openComponent(t, f32, UNetDir), sample, 301, ehs, 2, 16, 7, cross)
			b := runUNet(t, openComponent(t, f16, UNetDir), sample, 301, ehs, 2, 16, 7, cross)
			const tol = 0.05 // unit-scale outputs through ~40 layers of float16
			if d := maxAbsDiff(a, b); d > tol || d == 0 {
				t.Errorf("unet: float16 and float32 differ by %.3g (want (0, %g])", d, tol)
			}
		})
	}
}

// TestTextEncoderCausal checks the causal mask and the symbolic sequence
// length: the hidden states of a prefix do not depend on what follows it.
func TestTextEncoderCausal(t *testing.T) {
	testenv.RequireORT(t)
	dir := t.TempDir()
	if err := Write(dir, Tiny(), Options{}); err != nil {
		t.Fatal(err)
	}
	te := openComponent(t, dir, TextEncoderDir)
	ids, _ := promptIDs(GenerateVocabulary(0).Size(), 8)
	run := func(ids []int32) []float32 {
		n := int64(len(ids))
		out := []ort.Tensor{{Shape: []int64{1, n, 32}}, {Shape: []int64{1, 32}}}
		if err := te.Run(t.Context(), []ort.Tensor{{Shape: []int64{1, n}, Data: ids}}, out); err != nil {
			t.Fatal(err)
		}
		return out[0].Data.([]float32)
	}
	full, prefix := run(ids), run(ids[:5])
	if d := maxAbsDiff(full[:5*32], prefix); d > 1e-5 {
		t.Errorf("prefix hidden states differ by %.3g: attention is not causal", d)
	}
	changed := append([]int32{}, ids...)
	changed[3] = 700
	if d := maxAbsDiff(run(changed)[4*32:5*32], full[4*32:5*32]); d == 0 {
		t.Error("changing token 3 does not change position 4's hidden state")
	}
}
