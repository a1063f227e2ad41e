package sd_test

import (
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/session"
)

// The generated SDXL variants (the tiny-sdxl architecture, modelgen's
// weights): as optimum 1.23 exports it (int32 ids for text_encoder, int64
// for text_encoder_2, int64 timestep [steps]), and as newer optimum does
// (int64 ids, float32 scalar timestep), with external data, and in float16
// with a fixed batch of 1.
func xlModel(t *testing.T) string {
	return generate(t, "sdxl", modelgen.TinySDXL(), modelgen.Options{})
}

func xlNewerModel(t *testing.T) string {
	return generate(t, "sdxl newer", modelgen.TinySDXL(), modelgen.Options{
		IDs: onnxpb.Int64, Timestep: onnxpb.Float, TimestepShape: modelgen.TimestepScalar, ExternalFile: onnxpb.OptimumExternalFile})
}

func xlFP16Model(t *testing.T) string {
	return generate(t, "sdxl fp16", modelgen.TinySDXL(), modelgen.Options{FP16: true, Batch: 1})
}

func xlInt32Model(t *testing.T) string {
	return generate(t, "sdxl int32", modelgen.TinySDXL(), modelgen.Options{IDs2: onnxpb.Int32, Timestep: onnxpb.Float})
}

// TestOpenFolderXLGenerated opens the SDXL variants, checks what the
// Folder read from the files, and generates with each: the same weights
// give the same pixels whatever the ids' and timestep's types.
func TestOpenFolderXLGenerated(t *testing.T) {
	testenv.RequireORT(t)
	cfg := modelgen.TinySDXL()
	tests := []struct {
		name      string
		dir       func(*testing.T) string
		ids, ids2 ort.DType
		tsType    session.DType
		perItem   bool
		tol       float64 // on the pixels, against the first variant's
	}{
		{"optimum 1.23", xlModel, ort.Int32, ort.Int64, session.Int64, true, 0},
		{"int64 ids, float scalar timestep, model.onnx_data", xlNewerModel, ort.Int64, ort.Int64, session.Float32, false, 1e-5},
		{"int32 ids, float timestep [steps]", xlInt32Model, ort.Int32, ort.Int32, session.Float32, true, 1e-5},
		// float16 weights and computation (measured 3.2e-3)
		{"fp16, batch 1", xlFP16Model, ort.Int32, ort.Int64, session.Int64, true, 2e-2},
	}
	var first []float32
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir(t)
			for _, c := range []struct {
				folder string
				want   ort.DType
			}{{"text_encoder", tt.ids}, {"text_encoder_2", tt.ids2}} {
				ins, _, err := ort.ReadIO(filepath.Join(dir, c.folder, "model.onnx"))
				if err != nil || ins[0].DType != c.want {
					t.Fatalf("generated %s's inputs = %v, %v; want %v ids", c.folder, ins, err, c.want)
				}
			}
			f, err := sd.OpenFolder(t.Context(), dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if got, want := f.TextEncoder.Output(), "hidden_states."+strconv.Itoa(cfg.Text.Layers-1); got != want {
				t.Errorf("text_encoder output %s, want %s", got, want)
			}
			if got, want := f.TextEncoder2.Output(), "hidden_states."+strconv.Itoa(cfg.Text2.Layers-1); got != want {
				t.Errorf("text_encoder_2 output %s, want %s", got, want)
			}
			checks := []intCheck{
				{"TextEncoder.HiddenSize + TextEncoder2.HiddenSize", f.TextEncoder.HiddenSize() + f.TextEncoder2.HiddenSize(), cfg.UNet.CrossDim},
				{"UNet.CrossDim", f.UNet.CrossDim(), cfg.UNet.CrossDim},
				{"UNet.PooledDim", f.UNet.PooledDim(), cfg.Text2.ProjectionDim},
				{"UNet.TimeIDsDim", f.UNet.TimeIDsDim(), 6},
				{"Tokenizer2.Pad", int(f.Tokenizer2.Pad()), 0},
				{"TextEncoder2.PooledWidth", f.TextEncoder2.PooledWidth(), cfg.Text2.ProjectionDim},
			}
			checkFolder(t, f, checks, tt.tsType, tt.perItem, cfg.VAE.ScalingFactor)
			f.Close()
			m, err := sd.Open(t.Context(), dir)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			res, err := m.Generate(t.Context(), sd.Request{Prompt: "a red fox!", NegativePrompt: "blurry", Width: 64, Height: 48, Steps: 3, Seed: 4, LiteralPrompt: true})
			if err != nil {
				t.Fatal(err)
			}
			px := res.Pixels.Data().([]float32)
			for _, v := range px {
				if math.IsNaN(float64(v)) || v < 0 || v > 1 {
					t.Fatalf("pixel %v", v)
				}
			}
			if first == nil {
				first = px
			} else if d := testenv.MaxAbsDiff(px, first); d > tt.tol {
				t.Errorf("pixels differ by %g from the %s variant of the same weights, want at most %g", d, tests[0].name, tt.tol)
			}
		})
	}
}

// copyFrom copies the file src into dir as rel.
func copyFrom(t *testing.T, src, dir, rel string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, rel, string(b))
}

// TestOpenFolderXLGeneratedMismatch breaks an SDXL folder one way per case:
// each is refused before any session loads (no ONNX Runtime needed),
// naming the file and the cause.
func TestOpenFolderXLGeneratedMismatch(t *testing.T) {
	tests := []struct {
		name  string
		brk   func(t *testing.T, d string)
		file  string
		cause error
		text  string
	}{
		{
			name: "SD 1.x UNet in an SDXL folder",
			brk: func(t *testing.T, d string) {
				remove(t, d, "unet")
				src := filepath.Join(legacyModel(t), "unet")
				for _, f := range []string{"model.onnx", "weights.pb"} {
					copyFrom(t, filepath.Join(src, f), d, "unet/"+f)
				}
			},
			file: "unet/model.onnx", cause: sd.ErrMismatch, text: "takes no text_embeds and time_ids",
		},
		{
			name: "SDXL UNet without text_encoder_2",
			brk: func(t *testing.T, d string) {
				remove(t, d, "text_encoder_2")
				remove(t, d, "tokenizer_2")
				editJSON(t, d, "model_index.json", func(m map[string]any) {
					delete(m, "text_encoder_2")
					delete(m, "tokenizer_2")
					m["_class_name"] = "StableDiffusionPipeline"
				})
			},
			file: "unet/model.onnx", cause: sd.ErrUnsupported, text: "no text_encoder_2",
		},
		{
			name: "text encoder without hidden states",
			brk: func(t *testing.T, d string) {
				copyFrom(t, filepath.Join(legacyModel(t), "text_encoder", "model.onnx"), d, "text_encoder/model.onnx")
			},
			file: "text_encoder/model.onnx", cause: nil, text: "not an SDXL text encoder: no hidden_states",
		},
		{
			name: "refiner time_ids",
			brk: func(t *testing.T, d string) {
				editModel(t, d, "unet/model.onnx", func(m *onnxpb.Model) {
					for i := range m.Graph.Input {
						if m.Graph.Input[i].Name == "time_ids" {
							m.Graph.Input[i].Dims[1] = onnxpb.Dim{Value: 5}
						}
					}
				})
			},
			file: "unet/model.onnx", cause: sd.ErrUnsupported, text: "time_ids has 5 values",
		},
		{
			name: "pooled width",
			brk: func(t *testing.T, d string) {
				editJSON(t, d, "text_encoder_2/config.json", func(m map[string]any) { m["projection_dim"] = 64 })
			},
			file: "unet/model.onnx", cause: sd.ErrMismatch, text: "text_embeds is 40 wide, text_encoder_2 gives pooled embeddings of 64",
		},
		{
			name: "tokenizer_2 of another vocabulary",
			brk: func(t *testing.T, d string) {
				writeFile(t, d, "tokenizer_2/merges.txt", "#version: 0.2\n")
			},
			file: "tokenizer_2", cause: sd.ErrMismatch, text: "tokenizes text differently",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := copyDir(t, xlModel(t))
			tt.brk(t, dir)
			err := openBroken(t, dir)
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("error %q does not mention %q", err, tt.text)
			}
			var named bool
			for _, e := range unjoin(err) {
				fe, ok := errors.AsType[*sd.FolderError](e)
				if ok && fe.File == tt.file && strings.Contains(e.Error(), tt.text) {
					named = true
					if tt.cause != nil && !errors.Is(e, tt.cause) {
						t.Errorf("%v: wrong cause, want %v", e, tt.cause)
					}
				}
			}
			if !named {
				t.Errorf("no *FolderError names %s with %q", tt.file, tt.text)
			}
		})
	}
}

// unjoin returns the errors errors.Join joined into err, or err alone.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// TestXLWarmup warms an SDXL folder up: the UNet on its added
// conditioning, and both text encoders, reported as the text encoder's
// calls (one each with MaxCalls 1).
func TestXLWarmup(t *testing.T) {
	testenv.RequireORT(t)
	f, err := sd.OpenFolder(t.Context(), xlModel(t), sd.WithWarmup(sd.Warmup{Width: 64, Height: 64, MaxCalls: 1}))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := f.Load()
	if n := len(r.WarmupCalls[sd.TextEncoder]); n != 2 {
		t.Errorf("%d text encoder warm-up calls, want one per encoder: %v", n, r.WarmupCalls)
	}
	if n := len(r.WarmupCalls[sd.UNet]); n != 1 {
		t.Errorf("%d UNet warm-up calls, want 1", n)
	}
}

// TestXLUpcastVAE opens a float16 SDXL whose VAE config says force_upcast:
// the decoder runs as a float32 copy (as diffusers upcasts the VAE), which
// decodes closer to the float32 model of the same weights than the float16
// graph does; without force_upcast the float16 graph is kept.
func TestXLUpcastVAE(t *testing.T) {
	testenv.RequireORT(t)
	cache := t.TempDir()
	lat := make([]float32, 4*8*8)
	for i := range lat {
		lat[i] = float32(math.Sin(float64(i))) * 3
	}
	decode := func(dir string) ([]float32, ort.DType) {
		f, err := sd.OpenFolder(t.Context(), dir, sd.WithRewriteCache(cache), sd.WithoutRewrites())
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		out, err := f.VAEDecoder.Decode(t.Context(), tensor.New(tensor.WithShape(1, 4, 8, 8), tensor.WithBacking(slices.Clone(lat))))
		if err != nil {
			t.Fatal(err)
		}
		ins, _, err := ort.ReadIO(f.VAEDecoder.Loaded.File)
		if err != nil {
			t.Fatal(err)
		}
		return out.Data().([]float32), ins[0].DType
	}
	want, _ := decode(xlModel(t))
	up, dt := decode(xlFP16Model(t))
	if dt != ort.Float32 {
		t.Errorf("float16 decoder with force_upcast runs a graph taking %v, want its float32 copy", dt)
	}
	plainDir := copyDir(t, xlFP16Model(t))
	editJSON(t, plainDir, "vae_decoder/config.json", func(m map[string]any) { m["force_upcast"] = false })
	plain, dt := decode(plainDir)
	if dt != ort.Float16 {
		t.Errorf("float16 decoder without force_upcast runs a graph taking %v, want its own float16", dt)
	}
	dUp, dPlain := testenv.MaxAbsDiff(up, want), testenv.MaxAbsDiff(plain, want)
	t.Logf("against the float32 model: upcast float16 decoder %.3g, float16 decoder %.3g", dUp, dPlain)
	if !(dUp < dPlain) || dUp > 1e-2 {
		t.Errorf("upcast decoder differs from the float32 model by %g, the float16 one by %g: want the upcast one closer, within 1e-2", dUp, dPlain)
	}
}

// TestXLTurboSettings runs the SDXL-Turbo settings on the generated tiny
// SDXL: trailing timesteps (its scheduler config), one step at timestep
// 999, no guidance (one UNet row, no negative embeddings).
func TestXLTurboSettings(t *testing.T) {
	testenv.RequireORT(t)
	dir := copyDir(t, xlModel(t))
	editJSON(t, dir, "scheduler/scheduler_config.json", func(m map[string]any) { m["timestep_spacing"] = "trailing" })
	m, err := sd.Open(t.Context(), dir, sd.WithoutRewrites())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var ts []float64
	var rows []int
	res, err := m.Generate(t.Context(), sd.Request{Prompt: "a cat", Steps: 1, GuidanceScale: new(0.0), Seed: 3,
		OnStep: func(s sd.Step) { ts, rows = append(ts, s.Timestep), append(rows, s.TextEmbeddings.Shape()[0]) }})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ts, []float64{999}) || !slices.Equal(rows, []int{1}) {
		t.Errorf("timesteps %v with embedding rows %v, want [999] and one row", ts, rows)
	}
	for _, v := range res.Pixels.Data().([]float32) {
		if math.IsNaN(float64(v)) || v < 0 || v > 1 {
			t.Fatalf("pixel %v", v)
		}
	}
}

// TestXLLoadReport checks that the load report and log count
// text_encoder_2 with the text encoder: its load time, and its rewrites
// beside text_encoder's.
func TestXLLoadReport(t *testing.T) {
	testenv.RequireORT(t)
	rec := &recorder{}
	f, err := sd.OpenFolder(t.Context(), xlModel(t), sd.WithLogger(slog.New(rec)), sd.WithRewriteCache(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := f.Load()
	if r.Open[sd.TextEncoder] <= 0 || !strings.Contains(r.Rewrites[sd.TextEncoder], "text_encoder_2: ") {
		t.Errorf("text encoder load %v, rewrites %q: want text_encoder_2's counted in", r.Open[sd.TextEncoder], r.Rewrites[sd.TextEncoder])
	}
	rec.mu.Lock()
	logged := strings.Join(rec.msgs, "; ")
	rec.mu.Unlock()
	if !strings.Contains(logged, "sd: loaded text_encoder_2") {
		t.Errorf("log %q does not report loading text_encoder_2", logged)
	}
}
