package sd_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/session"
)

// TestOpenFolderBroken breaks one thing in a copy of the reference folder per
// case and checks that OpenFolder fails before loading any session, with a
// *FolderError that names the broken file and wraps the right cause. None of
// these cases needs ONNX Runtime: they are all caught by the cheap checks.
func TestOpenFolderBroken(t *testing.T) {
	tests := []struct {
		name  string
		brk   func(t *testing.T, dir string)
		file  string // the file the error must name
		cause func(error) bool
		text  string // more words the message must hold
	}{
		{
			name:  "no model_index.json",
			brk:   func(t *testing.T, d string) { remove(t, d, "model_index.json") },
			file:  "model_index.json",
			cause: isErr(fs.ErrNotExist),
			text:  "not a diffusers model folder",
		},
		{
			name:  "garbage model_index.json",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "model_index.json", "{\n  \"_class_name\": \"x\",,\n}") },
			file:  "model_index.json",
			cause: isType[*json.SyntaxError],
			text:  "line 2",
		},
		{
			name:  "model_index.json not an object",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "model_index.json", "[1, 2]") },
			file:  "model_index.json",
			cause: isType[*json.UnmarshalTypeError],
		},
		{
			name: "sdxl model_index.json on an SD 1.x folder",
			brk: func(t *testing.T, d string) {
				editJSON(t, d, "model_index.json", func(m map[string]any) {
					m["_class_name"] = "ORTStableDiffusionXLPipeline"
					m["text_encoder_2"] = []any{"transformers", "CLIPTextModelWithProjection"}
				})
			},
			file:  "tokenizer_2",
			cause: isErr(fs.ErrNotExist),
			text:  "missing folder",
		},
		{
			name: "sdxl refiner model_index.json",
			brk: func(t *testing.T, d string) {
				editJSON(t, d, "model_index.json", func(m map[string]any) {
					m["_class_name"] = "StableDiffusionXLImg2ImgPipeline"
					m["text_encoder"] = []any{nil, nil}
					m["text_encoder_2"] = []any{"transformers", "CLIPTextModelWithProjection"}
				})
			},
			file:  "model_index.json",
			cause: isErr(sd.ErrUnsupported),
			text:  "refiner",
		},
		{
			name: "garbage scheduler_config.json",
			brk: func(t *testing.T, d string) {
				writeFile(t, d, "scheduler/scheduler_config.json", "beta_start: 0.00085")
			},
			file:  "scheduler/scheduler_config.json",
			cause: isType[*json.SyntaxError],
		},
		{
			name: "scheduler_config.json field of the wrong type",
			brk: func(t *testing.T, d string) {
				writeFile(t, d, "scheduler/scheduler_config.json", `{"beta_start": "low"}`)
			},
			file:  "scheduler/scheduler_config.json",
			cause: isErr(scheduler.ErrConfig),
			text:  "beta_start",
		},
		{
			name:  "no scheduler folder",
			brk:   func(t *testing.T, d string) { remove(t, d, "scheduler") },
			file:  "scheduler/scheduler_config.json",
			cause: isErr(fs.ErrNotExist),
			text:  "missing",
		},
		{
			name:  "no unet",
			brk:   func(t *testing.T, d string) { remove(t, d, "unet") },
			file:  "unet",
			cause: isErr(fs.ErrNotExist),
			text:  "missing folder",
		},
		{
			name:  "no text encoder model",
			brk:   func(t *testing.T, d string) { remove(t, d, "text_encoder/model.onnx") },
			file:  "text_encoder/model.onnx",
			cause: isErr(fs.ErrNotExist),
		},
		{
			name: "pytorch unet",
			brk: func(t *testing.T, d string) {
				remove(t, d, "unet/model.onnx")
				writeFile(t, d, "unet/diffusion_pytorch_model.safetensors", "")
			},
			file:  "unet/model.onnx",
			cause: isErr(fs.ErrNotExist),
			text:  "PyTorch",
		},
		{
			name:  "truncated unet model",
			brk:   func(t *testing.T, d string) { truncateHalf(t, d, "unet/model.onnx") },
			file:  "unet/model.onnx",
			cause: isErr(sd.ErrTruncated),
			text:  "truncated",
		},
		{
			name:  "truncated vae encoder model",
			brk:   func(t *testing.T, d string) { truncateHalf(t, d, "vae_encoder/model.onnx") },
			file:  "vae_encoder/model.onnx",
			cause: isErr(sd.ErrTruncated),
		},
		{
			name: "garbage vae decoder model",
			brk: func(t *testing.T, d string) {
				writeFile(t, d, "vae_decoder/model.onnx", strings.Repeat("\xff garbage ", 100))
			},
			file:  "vae_decoder/model.onnx",
			cause: isErr(sd.ErrMalformed),
		},
		{
			name:  "empty text encoder model",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "text_encoder/model.onnx", "") },
			file:  "text_encoder/model.onnx",
			cause: func(err error) bool { return err != nil },
		},
		{
			name:  "no unet weights.pb",
			brk:   func(t *testing.T, d string) { remove(t, d, "unet/weights.pb") },
			file:  "unet/weights.pb",
			cause: isErr(fs.ErrNotExist),
			text:  "external data of unet/model.onnx",
		},
		{
			name:  "truncated unet weights.pb",
			brk:   func(t *testing.T, d string) { truncateHalf(t, d, "unet/weights.pb") },
			file:  "unet/weights.pb",
			cause: isErr(sd.ErrTruncated),
			text:  "truncated",
		},
		{
			name:  "no tokenizer vocab",
			brk:   func(t *testing.T, d string) { remove(t, d, "tokenizer/vocab.json") },
			file:  "tokenizer/vocab.json",
			cause: isErr(fs.ErrNotExist),
		},
		{
			name:  "no tokenizer",
			brk:   func(t *testing.T, d string) { remove(t, d, "tokenizer") },
			file:  "tokenizer",
			cause: isErr(fs.ErrNotExist),
		},
		{
			name: "garbage tokenizer_config.json",
			brk: func(t *testing.T, d string) {
				writeFile(t, d, "tokenizer/tokenizer_config.json", `{"model_max_length": 77`)
			},
			file:  "tokenizer/tokenizer_config.json",
			cause: isType[*json.SyntaxError],
		},
		{
			name:  "garbage vae_decoder config.json",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "vae_decoder/config.json", `{"scaling_factor": }`) },
			file:  "vae_decoder/config.json",
			cause: isType[*json.SyntaxError],
		},
		{
			name:  "negative scaling factor",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "vae_decoder/config.json", `{"scaling_factor": -1}`) },
			file:  "vae_decoder/config.json",
			cause: func(err error) bool { return err != nil },
			text:  "scaling_factor",
		},
		{
			name:  "string scaling factor",
			brk:   func(t *testing.T, d string) { writeFile(t, d, "vae/config.json", `{"scaling_factor": "0.2"}`) },
			file:  "vae/config.json",
			cause: isType[*json.UnmarshalTypeError],
		},
		{
			// A tokenizer with more tokens than the text encoder's
			// embedding has rows would index past the table.
			name: "tokenizer larger than text encoder vocabulary",
			brk: func(t *testing.T, d string) {
				editJSON(t, d, "tokenizer/vocab.json", func(m map[string]any) { m["zqxjzqxj</w>"] = len(m) })
			},
			file:  "text_encoder/model.onnx",
			cause: isErr(sd.ErrMismatch),
			text:  "vocab.json",
		},
		{
			name: "vae decoder takes other latent channels",
			brk: func(t *testing.T, d string) {
				editModel(t, d, "vae_decoder/model.onnx", func(m *onnxpb.Model) {
					m.Graph.Input[0].Dims[1] = onnxpb.Dim{Value: 16}
				})
			},
			file:  "vae_decoder/model.onnx",
			cause: isErr(sd.ErrMismatch),
			text:  "16 channels",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := referenceCopy(t)
			tt.brk(t, dir)
			err := openBroken(t, dir)
			fe, ok := errors.AsType[*sd.FolderError](err)
			if !ok {
				t.Fatalf("error is not a *sd.FolderError: %v", err)
			}
			if fe.File != tt.file || fe.Dir != dir {
				t.Errorf("FolderError names %q in %q, want %q in %q", fe.File, fe.Dir, tt.file, dir)
			}
			msg := err.Error()
			if want := "sd: " + filepath.Join(dir, filepath.FromSlash(tt.file)) + ": "; !strings.HasPrefix(msg, want) {
				t.Errorf("message %q does not start with %q", msg, want)
			}
			if tt.text != "" && !strings.Contains(msg, tt.text) {
				t.Errorf("message %q does not mention %q", msg, tt.text)
			}
			if !tt.cause(err) {
				t.Errorf("wrong cause: %v", err)
			}
		})
	}
}

// TestOpenFolderReportsEveryProblem checks that independent problems are all
// reported, each with its file.
func TestOpenFolderReportsEveryProblem(t *testing.T) {
	dir := referenceCopy(t)
	remove(t, dir, "unet/weights.pb")
	writeFile(t, dir, "scheduler/scheduler_config.json", "{")
	remove(t, dir, "vae_decoder")
	err := openBroken(t, dir)
	var files []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		if fe, ok := errors.AsType[*sd.FolderError](e); ok {
			files = append(files, fe.File)
		}
	}
	want := []string{"scheduler/scheduler_config.json", "unet/weights.pb", "vae_decoder"}
	if strings.Join(files, " ") != strings.Join(want, " ") {
		t.Errorf("reported %q, want %q (error: %v)", files, want, err)
	}
}

func TestOpenFolderNoFolder(t *testing.T) {
	for _, dir := range []string{filepath.Join(t.TempDir(), "nope"), os.Args[0]} {
		_, err := sd.OpenFolder(t.Context(), dir)
		fe, ok := errors.AsType[*sd.FolderError](err)
		if !ok || fe.Dir != dir || fe.File != "" {
			t.Errorf("OpenFolder(%q) = %v, want a *FolderError for the folder itself", dir, err)
		}
	}
	// An empty folder is not a model folder.
	dir := t.TempDir()
	_, err := sd.OpenFolder(t.Context(), dir)
	if fe, ok := errors.AsType[*sd.FolderError](err); !ok || fe.File != "model_index.json" {
		t.Errorf("OpenFolder(empty folder) = %v, want a *FolderError for model_index.json", err)
	}
}

// TestOpenFolderWrongModel puts one component's model in another's place:
// the component package rejects its signature, before its session loads.
func TestOpenFolderWrongModel(t *testing.T) {
	testenv.RequireORT(t)
	swap := func(src, dst string) func(*testing.T, string) {
		return func(t *testing.T, d string) { copyFile(t, d, src, dst) }
	}
	tests := []struct {
		name  string
		brk   func(*testing.T, string)
		file  string
		cause func(error) bool
		noun  string
		text  string
	}{
		{"vae decoder as text encoder", swap("vae_decoder/model.onnx", "text_encoder/model.onnx"), "text_encoder/model.onnx",
			isType[*session.SignatureError], "text encoder", "input_ids"},
		{"text encoder as unet", swap("text_encoder/model.onnx", "unet/model.onnx"), "unet/model.onnx",
			isType[*session.SignatureError], "UNet", `unexpected input "input_ids"`},
		{"vae encoder as vae decoder", swap("vae_encoder/model.onnx", "vae_decoder/model.onnx"), "vae_decoder/model.onnx",
			isType[*session.SignatureError], "VAE decoder", "latent_sample"},
		{
			"float token ids",
			func(t *testing.T, d string) {
				editModel(t, d, "text_encoder/model.onnx", func(m *onnxpb.Model) { m.Graph.Input[0].ElemType = onnxpb.Float })
			},
			"text_encoder/model.onnx", isType[*session.SignatureError], "text encoder", "input_ids is float32",
		},
		{
			"vae encoder with an unknown output",
			func(t *testing.T, d string) {
				editModel(t, d, "vae_encoder/model.onnx", func(m *onnxpb.Model) { m.Graph.Output[0].Name = "latent_dist" })
			},
			"vae_encoder/model.onnx", isType[*session.SignatureError], "VAE encoder", `"latent_dist"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := referenceCopy(t)
			tt.brk(t, dir)
			err := openBrokenFile(t, dir, tt.file)
			if !tt.cause(err) {
				t.Errorf("wrong cause: %v", err)
			}
			want := "sd: " + filepath.Join(dir, tt.file) + ": not a " + tt.noun + " model: "
			if msg := err.Error(); !strings.HasPrefix(msg, want) || !strings.Contains(msg, tt.text) {
				t.Errorf("message %q does not start with %q or does not mention %q", msg, want, tt.text)
			}
		})
	}
}

// recorder is a slog.Handler that keeps the messages and components logged.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler       { return r }
func (r *recorder) WithGroup(string) slog.Handler            { return r }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	s := rec.Message
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "component" {
			s += " " + a.Value.String()
		}
		return true
	})
	r.mu.Lock()
	r.msgs = append(r.msgs, s)
	r.mu.Unlock()
	return nil
}

func TestOpenFolderReference(t *testing.T) {
	testenv.RequireORT(t)
	dir := testenv.TinyReferenceModel(t)
	rec := &recorder{}
	f, err := sd.OpenFolder(t.Context(), dir, sd.WithLogger(slog.New(rec)), sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if f.Dir != dir {
		t.Errorf("Dir = %q, want %q", f.Dir, dir)
	}
	if f.Index.ClassName != "OnnxStableDiffusionPipeline" {
		t.Errorf("Index.ClassName = %q", f.Index.ClassName)
	}
	if got := f.Index.Components["unet"]; got != (sd.IndexEntry{Library: "diffusers", Class: "OnnxRuntimeModel"}) {
		t.Errorf("Index.Components[unet] = %+v", got)
	}
	if got, ok := f.Index.Components["safety_checker"]; !ok || got != (sd.IndexEntry{}) {
		t.Errorf("Index.Components[safety_checker] = %+v, %v; want a null entry", got, ok)
	}
	if f.Tokenizer == nil || f.TextEncoder == nil || f.UNet == nil || f.VAEDecoder == nil || f.VAEEncoder == nil || f.Scheduler == nil {
		t.Fatalf("missing parts: %+v", f)
	}
	checks := []struct {
		name      string
		got, want int
	}{
		{"TextEncoder.HiddenSize", f.TextEncoder.HiddenSize(), 32},
		{"UNet.CrossDim", f.UNet.CrossDim(), 32},
		{"UNet.InChannels", f.UNet.InChannels(), 4},
		{"UNet.OutChannels", f.UNet.OutChannels(), 4},
		{"VAEDecoder.LatentChannels", f.VAEDecoder.LatentChannels(), 4},
		{"VAEEncoder.LatentChannels", f.VAEEncoder.LatentChannels(), 4},
		{"Tokenizer.VocabSize", f.Tokenizer.VocabSize(), 49408},
		{"Tokenizer.MaxLength", f.Tokenizer.MaxLength(), 77},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if f.ScalingFactor != 0.18215 {
		t.Errorf("ScalingFactor = %v, want 0.18215", f.ScalingFactor)
	}
	if f.UNet.TimestepType() != session.Float32 {
		t.Errorf("UNet.TimestepType = %v, want float32", f.UNet.TimestepType())
	}
	rec.mu.Lock()
	logged := strings.Join(rec.msgs, "; ")
	rec.mu.Unlock()
	for _, c := range []string{"text_encoder", "unet", "vae_decoder", "vae_encoder"} {
		if !strings.Contains(logged, "sd: loaded "+c) {
			t.Errorf("log %q does not report loading %s", logged, c)
		}
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestOpenFolderVariants(t *testing.T) {
	testenv.RequireORT(t)
	tests := []struct {
		name      string
		edit      func(t *testing.T, dir string)
		opts      []sd.LoadOption
		encoder   bool
		scaling   float64
		className string
	}{
		{"without vae encoder option", nil, []sd.LoadOption{sd.WithoutVAEEncoder()}, false, 0.18215, "OnnxStableDiffusionPipeline"},
		{"no vae encoder folder", func(t *testing.T, d string) { remove(t, d, "vae_encoder") }, nil, false, 0.18215, "OnnxStableDiffusionPipeline"},
		{"broken vae encoder skipped", func(t *testing.T, d string) { truncateHalf(t, d, "vae_encoder/model.onnx") }, []sd.LoadOption{sd.WithoutVAEEncoder()}, false, 0.18215, "OnnxStableDiffusionPipeline"},
		{
			// optimum writes a config.json beside each model; the scaling
			// factor comes from the decoder's.
			"optimum configs",
			func(t *testing.T, d string) {
				writeFile(t, d, "vae_decoder/config.json", `{"_class_name": "AutoencoderKL", "scaling_factor": 0.13025, "latent_channels": 4}`)
				writeFile(t, d, "unet/config.json", `{"_class_name": "UNet2DConditionModel"}`)
				writeFile(t, d, "text_encoder/config.json", `{"model_type": "clip_text_model"}`)
				editJSON(t, d, "model_index.json", func(m map[string]any) {
					m["_class_name"] = "ORTStableDiffusionPipeline"
					m["requires_safety_checker"] = true
				})
			},
			nil, true, 0.13025, "ORTStableDiffusionPipeline",
		},
		{
			"scaling factor from vae config",
			func(t *testing.T, d string) { writeFile(t, d, "vae/config.json", `{"scaling_factor": 0.5}`) },
			nil, true, 0.5, "OnnxStableDiffusionPipeline",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := testenv.TinyReferenceModel(t)
			if tt.edit != nil {
				dir = referenceCopy(t)
				tt.edit(t, dir)
			}
			f, err := sd.OpenFolder(t.Context(), dir, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if (f.VAEEncoder != nil) != tt.encoder {
				t.Errorf("VAEEncoder loaded = %v, want %v", f.VAEEncoder != nil, tt.encoder)
			}
			if f.ScalingFactor != tt.scaling {
				t.Errorf("ScalingFactor = %v, want %v", f.ScalingFactor, tt.scaling)
			}
			if f.Index.ClassName != tt.className {
				t.Errorf("Index.ClassName = %q, want %q", f.Index.ClassName, tt.className)
			}
		})
	}
}

// TestOpenFolderLoadFailure makes one component fail at session load (a
// device the library lacks) and checks the error and that the others are
// closed again (the race detector and ORT's env refcount would catch a
// leak at the next test's Open; here the call must simply return).
func TestOpenFolderLoadFailure(t *testing.T) {
	testenv.RequireORT(t)
	dir := testenv.TinyReferenceModel(t)
	_, err := sd.OpenFolder(t.Context(), dir, sd.WithDevice(sd.VAEDecoder, sd.CoreML))
	if !isType[*ort.ProviderError](err) {
		t.Skipf("this ONNX Runtime build accepted CoreML (or failed otherwise): %v", err)
	}
	de, ok := errors.AsType[*sd.DeviceError](err)
	if !ok || de.Component != sd.VAEDecoder || de.Device != sd.CoreML {
		t.Errorf("error %v: want a *sd.DeviceError for the VAE decoder on coreml", err)
	}
	if !strings.Contains(err.Error(), "vae_decoder on coreml") {
		t.Errorf("error %q does not name the component and device", err)
	}
	// The folder still opens afterwards.
	f, err := sd.OpenFolder(t.Context(), dir, sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestOpenFolderCanceled(t *testing.T) {
	dir := testenv.TinyReferenceModel(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	f, err := sd.OpenFolder(ctx, dir)
	if !errors.Is(err, context.Canceled) {
		f.Close()
		t.Fatalf("OpenFolder with a canceled context = %v, want context.Canceled", err)
	}
}

func TestOpenFolderBadLibrary(t *testing.T) {
	dir := testenv.TinyReferenceModel(t)
	lib := filepath.Join(t.TempDir(), "libonnxruntime.so")
	writeFile(t, filepath.Dir(lib), filepath.Base(lib), "not a library")
	_, err := sd.OpenFolder(t.Context(), dir, sd.WithLibraryPath(lib))
	if !errors.Is(err, sd.ErrLibraryNotFound) || !strings.Contains(err.Error(), lib) {
		t.Errorf("OpenFolder with a bad library = %v, want sd.ErrLibraryNotFound naming %s", err, lib)
	}
}

func TestCloseNil(t *testing.T) {
	var f *sd.Folder
	if err := f.Close(); err != nil {
		t.Errorf("nil Folder Close = %v", err)
	}
}
