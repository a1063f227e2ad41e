package ckpt

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/textenc"
)

// tinyBuild builds a tiny checkpoint into a fresh cache.
func tinyBuild(t *testing.T, name string, opt BuildOptions) *Built {
	t.Helper()
	if opt.CacheDir == "" {
		opt.CacheDir = t.TempDir()
	}
	if opt.Config == nil {
		opt.Config = tinyConfig
	}
	opt.TokenizerDir = shareddir.File(t, "clip-tokenizer")
	b, err := Build(t.Context(), filepath.Join(tinyDir(t), name), opt)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBuildFolder builds the tiny checkpoint: every weight is a reference
// into the checkpoint (no copy), the folder has what a diffusers ONNX
// folder has, and a second Build finds it in the cache.
func TestBuildFolder(t *testing.T) {
	cache := t.TempDir()
	b := tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache})
	if b.Cached {
		t.Error("first build reported cached")
	}
	for _, p := range []string{"model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json", "tokenizer/merges.txt",
		"tokenizer/tokenizer_config.json", "text_encoder/model.onnx", "unet/model.onnx", "unet/config.json",
		"vae_decoder/model.onnx", "vae_decoder/config.json", "vae_encoder/model.onnx"} {
		if _, err := os.Stat(filepath.Join(b.Dir, p)); err != nil {
			t.Error(err)
		}
	}
	st, _ := os.Stat(filepath.Join(tinyDir(t), "tiny-sd.safetensors"))
	var external, inline int64
	for _, c := range []string{"text_encoder", "unet", "vae_decoder", "vae_encoder"} {
		m := testenv.ReadModel(t, filepath.Join(b.Dir, c, "model.onnx"))
		for _, in := range m.Graph.Initializer {
			if loc, _, n, ok := in.ExternalRange(); ok {
				switch {
				case loc == "tiny-sd.safetensors":
					external += n
				case loc == onnxpb.LegacyExternalFile && strings.HasPrefix(in.Name, "const/"):
					inline += n // graph constants (the causal mask)
				default:
					t.Errorf("%s %s: location %s", c, in.Name, loc)
				}
			} else {
				inline += int64(len(in.RawData))
			}
		}
		link, err := os.Stat(filepath.Join(b.Dir, c, "tiny-sd.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		if !b.Copied && !os.SameFile(link, st) {
			t.Errorf("%s: the checkpoint in the folder is not a link to it", c)
		}
	}
	if inline > 64<<10 {
		t.Errorf("%d bytes of weights were copied into the graphs", inline)
	}
	t.Logf("%d bytes referenced in the checkpoint, %d bytes inline (constants), copied=%v", external, inline, b.Copied)
	again := tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache})
	if !again.Cached || again.Dir != b.Dir {
		t.Errorf("second build: cached %v, dir %s (first %s)", again.Cached, again.Dir, b.Dir)
	}
	fp16 := tinyBuild(t, "tiny-sd-fp16.safetensors", BuildOptions{CacheDir: cache})
	if fp16.Dir == b.Dir {
		t.Error("the fp16 checkpoint has the fp32 one's cache key")
	}
}

// TestBuildTextEncoder runs the built text encoder on the reference ids.
func TestBuildTextEncoder(t *testing.T) {
	testenv.RequireORT(t)
	ref := testenv.LoadTinyReference(t)
	for _, tc := range []struct {
		file string
		tol  float64
	}{{"tiny-sd.safetensors", 1e-4}, {"tiny-sd-fp16.safetensors", 5e-2}} {
		b := tinyBuild(t, tc.file, BuildOptions{})
		te, err := textenc.Open(t.Context(), filepath.Join(b.Dir, "text_encoder", "model.onnx"), ort.Options{IntraOpThreads: 1}.Session())
		if err != nil {
			t.Fatal(err)
		}
		for i, call := range ref.ORT.TextEncoderCalls {
			out, err := te.Encode(t.Context(), call.InputIDs, 1)
			if err != nil {
				t.Fatal(err)
			}
			if d := testenv.MaxAbsDiff(out.Data().([]float32), call.LastHiddenState); d > tc.tol {
				t.Errorf("%s call %d: last_hidden_state differs by %g", tc.file, i, d)
			} else {
				t.Logf("%s call %d: max |Δ| %.2g", tc.file, i, d)
			}
		}
		te.Close()
	}
}

func TestFindTokenizer(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("SDPIPE_CACHE_DIR", filepath.Join(dir, "cache"))
	ck := filepath.Join(dir, "m.safetensors")
	_, err := FindTokenizer(ck, BuildOptions{})
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, "tokenizer")) || !strings.Contains(err.Error(), "vocab.json and merges.txt") {
		t.Errorf("error %v does not say what to put where", err)
	}
	os.MkdirAll(filepath.Join(dir, "tokenizer"), 0o755)
	os.WriteFile(filepath.Join(dir, "tokenizer", "vocab.json"), []byte("{}"), 0o644)
	os.WriteFile(filepath.Join(dir, "tokenizer", "merges.txt"), []byte(""), 0o644)
	if d, err := FindTokenizer(ck, BuildOptions{}); err != nil || d != filepath.Join(dir, "tokenizer") {
		t.Errorf("FindTokenizer = %s, %v", d, err)
	}
	if _, err := FindTokenizer(ck, BuildOptions{TokenizerDir: dir}); err == nil {
		t.Error("a folder without the files was accepted")
	}
}

// TestBuildSeparateVAE replaces the checkpoint's VAE with a separate VAE
// file (original layout, no prefix) whose decoder.conv_out.bias is 0.5
// larger: the built decoder's output moves by exactly 0.5, and the graphs
// reference the VAE file.
func TestBuildSeparateVAE(t *testing.T) {
	testenv.RequireORT(t)
	f := openTiny(t, "tiny-sd.safetensors")
	var ws []safetensors.WriteTensor
	for _, x := range f.Tensors {
		name, ok := strings.CutPrefix(x.Name, "first_stage_model.")
		if !ok {
			continue
		}
		v, err := f.Float32s(x.Name)
		if err != nil {
			t.Fatal(err)
		}
		if name == "decoder.conv_out.bias" {
			for i := range v {
				v[i] += 0.5
			}
		}
		ws = append(ws, safetensors.WriteTensor{Name: name, DType: safetensors.F32, Shape: x.Shape, Data: safetensors.FromFloat32(safetensors.F32, v)})
	}
	vaePath := filepath.Join(t.TempDir(), "my-vae.safetensors")
	if err := safetensors.WriteFile(vaePath, ws, nil); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	base := tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache})
	withVAE := tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache, VAE: vaePath})
	if base.Dir == withVAE.Dir {
		t.Fatal("the VAE file is not part of the cache key")
	}
	if _, err := os.Stat(filepath.Join(withVAE.Dir, "vae_decoder", "my-vae.safetensors")); err != nil {
		t.Errorf("the VAE file is not linked into vae_decoder/: %v", err)
	}
	ref := testenv.LoadTinyReference(t)
	decode := func(dir string) []float32 {
		s, ins := openSession(t, dir, "vae_decoder")
		out := []ort.Tensor{{Shape: []int64{1, 3, 64, 64}}}
		if err := s.Run(t.Context(), feed(t, ins, map[string]ort.Tensor{"latent_sample": {Shape: []int64{1, 4, 8, 8}, Data: ref.ORT.VAEDecoderInput}}, nil), out); err != nil {
			t.Fatal(err)
		}
		return out[0].Data.([]float32)
	}
	a, b := decode(base.Dir), decode(withVAE.Dir)
	var worst float64
	for i := range a {
		worst = max(worst, math.Abs(float64(b[i]-a[i])-0.5))
	}
	if worst > 1e-5 {
		t.Errorf("decoder outputs differ by 0.5 ± %g", worst)
	}
	if d := testenv.MaxAbsDiff(a, ref.ORT.VAEDecoderOutput); d > 1e-4 {
		t.Errorf("base decoder differs from diffusers' by %g", d)
	}
}

// TestWriteOriginal writes a random-weight checkpoint of the tiny
// architecture in the original layout and the model folder modelgen.Write
// makes with the same seed: the graphs built from the checkpoint compute
// what the folder's do (UNet, text encoder, VAE decoder).
func TestWriteOriginal(t *testing.T) {
	testenv.RequireORT(t)
	f := openTiny(t, "tiny-sd.safetensors")
	a, err := Detect(f.Tensors, tinyConfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ModelConfig(a)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "random.safetensors")
	if err := WriteOriginal(path, a, cfg, 7, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	g, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if got, want := len(g.Tensors), len(OriginalLayout(a, safetensors.F32, true)); got != want || got != 568+15 {
		t.Errorf("%d tensors, want %d (568 + 15 extras)", got, want)
	}
	if v, _ := g.Float32s("alphas_cumprod"); len(v) != 1000 || math.Abs(float64(v[999])-0.0046) > 1e-4 {
		t.Errorf("alphas_cumprod[999] = %v", v[len(v)-1])
	}
	folder := filepath.Join(dir, "folder")
	if err := modelgen.Write(folder, cfg, modelgen.Options{Seed: 7}); err != nil {
		t.Fatal(err)
	}
	b, err := Build(t.Context(), path, BuildOptions{CacheDir: t.TempDir(), Config: tinyConfig, TokenizerDir: shareddir.File(t, "clip-tokenizer")})
	if err != nil {
		t.Fatal(err)
	}
	ref := testenv.LoadTinyReference(t)
	step := ref.ORT.Steps[5]
	compareFolders(t, b.Dir, folder, []componentCall{
		{"unet", map[string]ort.Tensor{
			"sample":                {Shape: []int64{1, 4, 8, 8}, Data: step.SampleInput[:256]},
			"timestep":              {Shape: []int64{1}, Data: step.TimestepInput[:1]},
			"encoder_hidden_states": {Shape: []int64{1, 77, 32}, Data: ref.ORT.TextEncoderCalls[0].LastHiddenState},
		}, []int64{1, 4, 8, 8}},
		{"text_encoder", map[string]ort.Tensor{"input_ids": {Shape: []int64{1, 77}, Data: ref.ORT.TextEncoderCalls[0].InputIDs}}, []int64{1, 77, 32}},
		{"vae_decoder", map[string]ort.Tensor{"latent_sample": {Shape: []int64{1, 4, 8, 8}, Data: ref.ORT.VAEDecoderInput}}, []int64{1, 3, 64, 64}},
	})
}

// TestWriteOriginalSD2 does TestWriteOriginal for a tiny SD 2.x (OpenCLIP
// text encoder: fused in_proj split into q/k/v rows, an unused last layer
// and projection in the file; linear projections; heads per level): the
// checkpoint's graphs compute what modelgen's TinySD2 folder does.
func TestWriteOriginalSD2(t *testing.T) {
	testenv.RequireORT(t)
	cfg := modelgen.TinySD2()
	cfg.Text.Vocab, cfg.Text.EOSTokenID = 49408, 2
	a := &Arch{Family: SD2, Prediction: "v_prediction", ImageSize: 8 * cfg.UNet.SampleSize,
		UNet: UNetArch{InChannels: 4, OutChannels: 4, BlockChannels: cfg.UNet.BlockChannels, LayersPerBlock: cfg.UNet.LayersPerBlock,
			CrossAttention: cfg.UNet.CrossAttention, TransformerDepth: []int{1, 0}, MidDepth: 1, Heads: cfg.UNet.LevelHeads,
			CrossAttentionDim: cfg.Text.Hidden, LinearProjection: true, UpcastAttention: true, TimeEmbedDim: 4 * cfg.UNet.BlockChannels[0]},
		VAE: VAEArch{InChannels: 3, OutChannels: 3, LatentChannels: 4, BlockChannels: cfg.VAE.BlockChannels, LayersPerBlock: cfg.VAE.LayersPerBlock, ScalingFactor: cfg.VAE.ScalingFactor},
		Text: []TextArch{{Component: TextEncoder, TextConfig: modelgen.TextConfig{Vocab: 49408, Hidden: cfg.Text.Hidden, Layers: cfg.Text.Layers, Heads: cfg.Text.Heads,
			Intermediate: cfg.Text.Intermediate, MaxPositions: 77, Activation: "gelu"}, LayerNormEps: 1e-5, PadToken: "!"}},
	}
	if _, err := ModelConfig(a); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "sd2.safetensors")
	if err := WriteOriginal(path, a, cfg, 3, safetensors.F32); err != nil {
		t.Fatal(err)
	}
	folder := filepath.Join(dir, "folder")
	if err := modelgen.Write(folder, cfg, modelgen.Options{Seed: 3}); err != nil {
		t.Fatal(err)
	}
	conf := &Config{UNetHeads: cfg.UNet.LevelHeads, TextHeads: map[Component]int{TextEncoder: cfg.Text.Heads}}
	b, err := Build(t.Context(), path, BuildOptions{CacheDir: t.TempDir(), Config: conf, TokenizerDir: shareddir.File(t, "clip-tokenizer")})
	if err != nil {
		t.Fatal(err)
	}
	if b.Arch.Family != SD2 || b.Arch.Text[0].Layers != cfg.Text.Layers {
		t.Fatalf("detected %s with %d text layers", b.Arch.Family, b.Arch.Text[0].Layers)
	}
	ids := make([]int32, 77)
	ids[0], ids[1], ids[2], ids[3] = 49406, 320, 1125, 49407
	sample := make([]float32, 4*12*12)
	for i := range sample {
		sample[i] = float32(math.Sin(float64(i)))
	}
	ehs := make([]float32, 77*cfg.Text.Hidden)
	for i := range ehs {
		ehs[i] = float32(math.Cos(float64(i) / 7))
	}
	compareFolders(t, b.Dir, folder, []componentCall{
		{"text_encoder", map[string]ort.Tensor{"input_ids": {Shape: []int64{1, 77}, Data: ids}}, []int64{1, 77, int64(cfg.Text.Hidden)}},
		{"unet", map[string]ort.Tensor{
			"sample":                {Shape: []int64{1, 4, 12, 12}, Data: sample},
			"timestep":              {Shape: []int64{1}, Data: []float32{601}},
			"encoder_hidden_states": {Shape: []int64{1, 77, int64(cfg.Text.Hidden)}, Data: ehs},
		}, []int64{1, 4, 12, 12}},
	})
}

// componentCall is a call of one component's model: its inputs by name and
// its output's shape.
type componentCall struct {
	component string
	in        map[string]ort.Tensor
	out       []int64
}

// compareFolders runs each call on the model folder built from a
// checkpoint and on modelgen's folder, and fails the test where their
// outputs differ by more than 1e-5.
func compareFolders(t *testing.T, built, folder string, calls []componentCall) {
	t.Helper()
	for _, tc := range calls {
		var outs [2][]float32
		for i, d := range []string{built, folder} {
			s, ins := openSession(t, d, tc.component)
			o := []ort.Tensor{{Shape: tc.out}}
			if err := s.Run(t.Context(), feed(t, ins, tc.in, nil), o); err != nil {
				t.Fatal(err)
			}
			outs[i] = o[0].Data.([]float32)
		}
		if d := testenv.MaxAbsDiff(outs[0], outs[1]); d > 1e-5 {
			t.Errorf("%s: the checkpoint's graph differs from modelgen's folder by %g", tc.component, d)
		} else {
			t.Logf("%s: max |Δ| %.2g", tc.component, d)
		}
	}
}
