package modelgen

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// parityTol is how close the built graphs must come to diffusers' PyTorch
// outputs: ONNX Runtime on the reference exports is within 1.5e-6 of them.
const parityTol = 1e-5

// stTensor is one tensor of a safetensors file: its element type and shape
// and where its bytes lie (offset from the start of the file).
type stTensor struct {
	typ            onnxpb.DataType
	shape          []int64
	offset, length int64
}

// readSafetensors reads a safetensors header (little-endian u64 length,
// JSON) without touching the tensor data.
func readSafetensors(t *testing.T, path string) map[string]stTensor {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var n uint64
	if err := binary.Read(f, binary.LittleEndian, &n); err != nil {
		t.Fatal(err)
	}
	if n > 100<<20 {
		t.Fatalf("%s: header of %d bytes", path, n)
	}
	head := make([]byte, n)
	if _, err := f.ReadAt(head, 8); err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(head, &raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	types := map[string]onnxpb.DataType{"F32": onnxpb.Float, "F16": onnxpb.Float16, "BF16": onnxpb.BFloat16}
	out := map[string]stTensor{}
	for name, r := range raw {
		if name == "__metadata__" {
			continue
		}
		var e struct {
			DType   string   `json:"dtype"`
			Shape   []int64  `json:"shape"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(r, &e); err != nil {
			t.Fatalf("%s: %s: %v", path, name, err)
		}
		typ, ok := types[e.DType]
		if !ok {
			t.Fatalf("%s: %s: dtype %s", path, name, e.DType)
		}
		out[name] = stTensor{typ: typ, shape: e.Shape, offset: 8 + int64(n) + e.Offsets[0], length: e.Offsets[1] - e.Offsets[0]}
	}
	return out
}

// keymapSource serves the diffusers parameters of a single-file checkpoint
// as references into it, through the key map of ../shared/reference/tiny-ckpt.
type keymapSource struct {
	loc    string
	params map[Component]map[string]stTensor
}

func (s keymapSource) Param(c Component, name string, shape []int64, _ Init) (*onnxpb.Tensor, error) {
	e, ok := s.params[c][name]
	if !ok {
		return nil, fmt.Errorf("%s %s not in the checkpoint: %w", c, name, ErrNoParam)
	}
	return onnxpb.ExternalRef(name, e.typ, e.shape, s.loc, e.offset, e.length)
}

func newKeymapSource(t *testing.T, dir, file string) keymapSource {
	t.Helper()
	st := readSafetensors(t, filepath.Join(dir, file))
	var km struct {
		Entries []struct {
			LDMKey    string  `json:"ldm_key"`
			Component string  `json:"component"`
			Key       string  `json:"diffusers_key"`
			Shape     []int64 `json:"diffusers_shape"`
		} `json:"entries"`
	}
	shareddir.ReadJSON(t, filepath.Join(dir, "keymap.json"), &km)
	s := keymapSource{loc: file, params: map[Component]map[string]stTensor{}}
	for _, e := range km.Entries {
		tn, ok := st[e.LDMKey]
		if !ok {
			t.Fatalf("%s: no %s", file, e.LDMKey)
		}
		tn.shape = e.Shape // the VAE attention's 1×1 kernels are Linear weights: same bytes
		c := Component(e.Component)
		if s.params[c] == nil {
			s.params[c] = map[string]stTensor{}
		}
		s.params[c][e.Key] = tn
	}
	if len(st) != len(km.Entries) {
		t.Fatalf("%s has %d tensors, the key map %d", file, len(st), len(km.Entries))
	}
	return s
}

// openModel opens a built model from memory in ONNX Runtime, with its
// external data in extDir.
func openModel(t *testing.T, name string, m *onnxpb.Model, extDir string) *ort.Session {
	t.Helper()
	data, err := onnxpb.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.OpenData(t.Context(), name, data, extDir, ioInfos(m.Graph.Input), ioInfos(m.Graph.Output), testSessionOptions)
	return testenv.CloseAtEnd(t, s, err)
}

// run runs s and returns its float32 outputs.
func run(t *testing.T, s *ort.Session, in []ort.Tensor, outShapes ...[]int64) [][]float32 {
	t.Helper()
	out := make([]ort.Tensor, len(outShapes))
	for i, sh := range outShapes {
		out[i] = ort.Tensor{Shape: sh}
	}
	if err := s.Run(t.Context(), in, out); err != nil {
		t.Fatal(err)
	}
	res := make([][]float32, len(out))
	for i := range out {
		res[i] = out[i].Data.([]float32)
	}
	return res
}

func expectClose(t *testing.T, what string, got, want []float32, tol float64) float64 {
	t.Helper()
	d := testenv.MaxAbsDiff(got, want)
	if d > tol {
		t.Errorf("%s: differs from diffusers by %.3g (tolerance %g)", what, d, tol)
	}
	return d
}

// sd1Config builds the tiny reference's Config from its diffusers and
// transformers configs.
func sd1Config(t *testing.T, refDir string) Config {
	t.Helper()
	var tc struct {
		Full map[string]json.RawMessage `json:"full_configs"`
	}
	shareddir.ReadJSON(t, filepath.Join(refDir, "torch_model_configs.json"), &tc)
	text, err := ParseTextConfig(tc.Full["text_encoder"], false)
	if err != nil {
		t.Fatal(err)
	}
	un, err := ParseUNetConfig(tc.Full["unet"])
	if err != nil {
		t.Fatal(err)
	}
	vae, err := ParseVAEConfig(tc.Full["vae"])
	if err != nil {
		t.Fatal(err)
	}
	return Config{Name: "tiny-onnx-sd", Text: text, UNet: un, VAE: vae}
}

// TestParitySD1 builds the tiny SD 1.x reference model's text encoder, UNet
// and VAE from its single-file checkpoint (../shared/reference/tiny-ckpt,
// referenced in place, not copied) and its diffusers configs, and checks
// that ONNX Runtime on the built graphs reproduces what diffusers' PyTorch
// modules computed in reference.json: both text-encoder calls, all 21 UNet
// calls, the VAE decode, and the VAE encoder's posterior mean and std.
func TestParitySD1(t *testing.T) {
	testenv.RequireORT(t)
	shared := testenv.SharedDir(t)
	refDir := filepath.Join(shared, "reference", "tiny-onnx-sd")
	ckptDir := filepath.Join(shared, "reference", "tiny-ckpt")
	cfg := sd1Config(t, refDir)
	if cfg.UNet.Heads != 8 || cfg.UNet.CrossAttention[0] || !cfg.UNet.CrossAttention[1] || cfg.UNet.LinearProjection || cfg.Text.EOSTokenID != 49407 {
		t.Fatalf("configs read as %+v", cfg)
	}
	ref := testenv.LoadTinyReference(t)
	pt := ref.PyTorch

	for _, file := range []string{"tiny-sd.safetensors", "tiny-sd-fp16.safetensors"} {
		t.Run(file, func(t *testing.T) {
			fp16 := file == "tiny-sd-fp16.safetensors"
			// The fp16 file holds the weights rounded to float16, widened to
			// float32 in the graph: its outputs differ from diffusers' by
			// what that rounding does (a sanity bound, not parity).
			tol := parityTol
			if fp16 {
				tol = 5e-3
			}
			opt := Options{Source: newKeymapSource(t, ckptDir, file), TimestepShape: TimestepOne, LatentParameters: true}
			g := buildAll(t, cfg, opt, 0)
			te, un, dec, enc := g.text, g.unet, g.vaeDec, g.vaeEnc
			var worst float64
			h := int64(cfg.Text.Hidden)
			tes := openModel(t, "text_encoder", te, ckptDir)
			for i, c := range pt.TextEncoderCalls {
				out := run(t, tes, []ort.Tensor{{Shape: []int64{1, 77}, Data: c.InputIDs}}, []int64{1, 77, h}, []int64{1, h})
				worst = math.Max(worst, expectClose(t, fmt.Sprintf("text encoder call %d: last_hidden_state", i), out[0], c.LastHiddenState, tol))
				worst = math.Max(worst, expectClose(t, fmt.Sprintf("text encoder call %d: pooler_output", i), out[1], c.PoolerOutput, tol))
			}
			// encoder_hidden_states = [uncond; cond]: the calls are cond, uncond.
			ehs := append(append([]float32{}, pt.TextEncoderCalls[1].LastHiddenState...), pt.TextEncoderCalls[0].LastHiddenState...)
			uns := openModel(t, "unet", un, ckptDir)
			for i, s := range pt.Steps {
				out := run(t, uns, []ort.Tensor{
					{Shape: []int64{2, 4, 8, 8}, Data: s.SampleInput},
					{Shape: []int64{1}, Data: s.TimestepInput},
					{Shape: []int64{2, 77, h}, Data: ehs},
				}, []int64{2, 4, 8, 8})
				worst = math.Max(worst, expectClose(t, fmt.Sprintf("unet step %d", i), out[0], s.NoisePred, tol))
			}
			img := run(t, openModel(t, "vae_decoder", dec, ckptDir), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: pt.VAEDecoderInput}}, []int64{1, 3, 64, 64})
			worst = math.Max(worst, expectClose(t, "vae decoder", img[0], pt.VAEDecoderOutput, tol))

			x := numpyUniform(5, -1, 1, 3*64*64)
			par := run(t, openModel(t, "vae_encoder", enc, ckptDir), []ort.Tensor{{Shape: []int64{1, 3, 64, 64}, Data: x}}, []int64{1, 8, 8, 8})[0]
			std := make([]float32, 256)
			for i := range std { // DiagonalGaussianDistribution: std = exp(½·clamp(logvar, -30, 20))
				std[i] = float32(math.Exp(0.5 * math.Max(-30, math.Min(20, float64(par[256+i])))))
			}
			worst = math.Max(worst, expectClose(t, "vae encoder mean", par[:256], ref.VAEEncoderCheck.Mean, tol))
			worst = math.Max(worst, expectClose(t, "vae encoder std", std, ref.VAEEncoderCheck.Std, tol))
			t.Logf("%s: largest difference to diffusers' PyTorch outputs %.3g", file, worst)
		})
	}
}

// numpyUniform returns np.random.RandomState(seed).uniform(lo, hi, n)
// .astype(float32): MT19937 seeded by init_genrand and numpy's 53-bit
// doubles.
func numpyUniform(seed uint32, lo, hi float64, n int) []float32 {
	var mt [624]uint32
	mt[0] = seed
	for i := uint32(1); i < 624; i++ {
		mt[i] = 1812433253*(mt[i-1]^(mt[i-1]>>30)) + i
	}
	pos := 624
	next := func() uint32 {
		if pos >= 624 {
			for i := 0; i < 624; i++ {
				y := mt[i]&0x80000000 | mt[(i+1)%624]&0x7fffffff
				v := mt[(i+397)%624] ^ y>>1
				if y&1 != 0 {
					v ^= 0x9908b0df
				}
				mt[i] = v
			}
			pos = 0
		}
		y := mt[pos]
		pos++
		y ^= y >> 11
		y ^= y << 7 & 0x9d2c5680
		y ^= y << 15 & 0xefc60000
		return y ^ y>>18
	}
	out := make([]float32, n)
	for i := range out {
		a, b := next()>>5, next()>>6
		u := (float64(a)*67108864 + float64(b)) / 9007199254740992
		out[i] = float32(lo + (hi-lo)*u)
	}
	return out
}
