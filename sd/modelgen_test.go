package sd_test

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
	"github.com/sdpipe/sdpipe/session"
)

// generated caches the folders modelgen writes (slow under -race) for the
// whole test binary; tests must not modify them (copyDir first).
var generated struct {
	sync.Mutex
	root string
	dirs map[string]string
}

func TestMain(m *testing.M) {
	flag.Parse()
	if _, _, err := ort.Version(""); err != nil {
		// the examples run the embedded model, and an example cannot skip
		fmt.Fprintf(os.Stderr, "sd: skipping the examples: ONNX Runtime is not available (run scripts/setup.sh): %v\n", err)
		if flag.Lookup("test.skip").Value.String() == "" {
			if err := flag.Set("test.skip", "^Example"); err != nil {
				panic(err)
			}
		}
	}
	code := m.Run()
	if generated.root != "" {
		os.RemoveAll(generated.root)
	}
	os.Exit(code)
}

// generate returns a model folder written by modelgen with cfg and opt,
// generating it on first use under the name key.
func generate(t *testing.T, key string, cfg modelgen.Config, opt modelgen.Options) string {
	t.Helper()
	generated.Lock()
	defer generated.Unlock()
	if d, ok := generated.dirs[key]; ok {
		return d
	}
	if generated.root == "" {
		r, err := os.MkdirTemp("", "sd-test-")
		if err != nil {
			t.Fatal(err)
		}
		generated.root, generated.dirs = r, make(map[string]string)
	}
	dir := filepath.Join(generated.root, strconv.Itoa(len(generated.dirs)))
	if err := modelgen.Write(dir, cfg, opt); err != nil {
		t.Fatalf("modelgen.Write: %v", err)
	}
	generated.dirs[key] = dir
	return dir
}

// The generated variants. Options that real exports combine are combined
// here too, to keep the number of (slow) generations small.
func legacyModel(t *testing.T) string {
	return generate(t, "legacy", modelgen.Tiny(), modelgen.Options{})
}

func fp16Model(t *testing.T) string {
	return generate(t, "fp16", modelgen.Tiny(), modelgen.Options{
		FP16: true, Batch: 1, TimestepShape: modelgen.TimestepOne, LatentParameters: true})
}

// optimumModel has int64 ids, a scalar int64 timestep, model.onnx_data, a
// text encoder of another width and another scaling factor.
func optimumConfig() modelgen.Config {
	c := modelgen.Tiny()
	c.Text.Hidden = 48 // the UNet follows (CrossDim 0 = Text.Hidden)
	c.VAE.ScalingFactor = 0.13025
	return c
}

func optimumModel(t *testing.T) string {
	return generate(t, "optimum", optimumConfig(), modelgen.Options{
		IDs: onnxpb.Int64, Timestep: onnxpb.Int64, TimestepShape: modelgen.TimestepScalar,
		ExternalFile: onnxpb.OptimumExternalFile, Attention: modelgen.Baddbmm})
}

func halfTimestepModel(t *testing.T) string {
	return generate(t, "half timestep", modelgen.Tiny(), modelgen.Options{Timestep: onnxpb.Float16})
}

// TestOpenFolderGenerated opens every I/O variant that real exports come in
// and checks that what the Folder reports was read from the models.
func TestOpenFolderGenerated(t *testing.T) {
	testenv.RequireORT(t)
	tests := []struct {
		name string
		dir  func(*testing.T) string
		cfg  modelgen.Config
		// expectations beyond those read from cfg
		ids      ort.DType
		tsType   session.DType
		perItem  bool
		batch    int
		external string
		encoder  string // the VAE encoder's output
	}{
		{name: "legacy", dir: legacyModel, cfg: modelgen.Tiny(), ids: ort.Int32, tsType: session.Float32, perItem: true, external: "weights.pb", encoder: "latent_sample"},
		{name: "fp16, batch 1, timestep [1], latent_parameters", dir: fp16Model, cfg: modelgen.Tiny(), ids: ort.Int32, tsType: session.Float16, batch: 1, external: "weights.pb", encoder: "latent_parameters"},
		{name: "int64 ids, scalar int64 timestep, model.onnx_data, hidden 48", dir: optimumModel, cfg: optimumConfig(), ids: ort.Int64, tsType: session.Int64, external: "model.onnx_data", encoder: "latent_sample"},
		{name: "float16 timestep", dir: halfTimestepModel, cfg: modelgen.Tiny(), ids: ort.Int32, tsType: session.Float16, perItem: true, external: "weights.pb", encoder: "latent_sample"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.dir(t)
			// The variant is what the test says it is.
			if ext, err := onnxpb.ExternalFiles(filepath.Join(dir, "unet", "model.onnx")); err != nil || len(ext) != 1 || ext[0] != tt.external {
				t.Fatalf("generated UNet's external data = %q, %v; want %s", ext, err, tt.external)
			}
			ins, _, err := ort.ReadIO(filepath.Join(dir, "text_encoder", "model.onnx"))
			if err != nil || ins[0].DType != tt.ids {
				t.Fatalf("generated text encoder's inputs = %v, %v; want %v ids", ins, err, tt.ids)
			}
			_, outs, err := ort.ReadIO(filepath.Join(dir, "vae_encoder", "model.onnx"))
			if err != nil || outs[0].Name != tt.encoder {
				t.Fatalf("generated VAE encoder's outputs = %v, %v; want %s", outs, err, tt.encoder)
			}
			f, err := sd.OpenFolder(t.Context(), dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			c := tt.cfg
			checks := []intCheck{
				{"TextEncoder.HiddenSize", f.TextEncoder.HiddenSize(), c.Text.Hidden},
				{"UNet.CrossDim", f.UNet.CrossDim(), c.Text.Hidden},
				{"UNet.InChannels", f.UNet.InChannels(), c.UNet.InChannels},
				{"UNet.OutChannels", f.UNet.OutChannels(), c.UNet.OutChannels},
				{"VAEDecoder.LatentChannels", f.VAEDecoder.LatentChannels(), c.VAE.LatentChannels},
				{"VAEEncoder.LatentChannels", f.VAEEncoder.LatentChannels(), c.VAE.LatentChannels},
				{"TextEncoder.FixedBatch", f.TextEncoder.FixedBatch(), tt.batch},
				{"UNet.FixedBatch", f.UNet.FixedBatch(), tt.batch},
			}
			checkFolder(t, f, checks, tt.tsType, tt.perItem, c.VAE.ScalingFactor)
			if f.Scheduler == nil || f.Tokenizer == nil {
				t.Error("scheduler or tokenizer not loaded")
			}
		})
	}
}

// TestOpenFolderGeneratedMismatch opens folders whose models were made for
// different architectures: they are rejected before any session loads (no
// ONNX Runtime needed), naming the model that does not fit.
func TestOpenFolderGeneratedMismatch(t *testing.T) {
	tests := []struct {
		name string
		make func(t *testing.T) string
		file string
		text string
	}{
		{
			name: "another model's text encoder",
			make: func(t *testing.T) string {
				dir := copyDir(t, legacyModel(t))
				b, err := os.ReadFile(filepath.Join(optimumModel(t), "text_encoder", "model.onnx"))
				if err != nil {
					t.Fatal(err)
				}
				writeFile(t, dir, "text_encoder/model.onnx", string(b))
				return dir
			},
			file: "unet/model.onnx",
			text: "encoder_hidden_states is 32 wide, the text encoder (text_encoder/model.onnx) gives hidden states of 48",
		},
		{
			// The real CLIP tokenizer (49408 tokens) with a text encoder
			// made for the generated vocabulary.
			name: "tokenizer larger than the text encoder's vocabulary",
			make: func(t *testing.T) string {
				ref := testenv.TinyReferenceModel(t)
				dir := copyDir(t, legacyModel(t))
				remove(t, dir, "tokenizer")
				if err := os.Rename(copyDir(t, filepath.Join(ref, "tokenizer")), filepath.Join(dir, "tokenizer")); err != nil {
					t.Fatal(err)
				}
				return dir
			},
			file: "text_encoder/model.onnx",
			text: "fewer than the 49408 tokens of tokenizer/vocab.json",
		},
		{
			name: "vae decoder with 8 latent channels",
			make: func(t *testing.T) string {
				return latents8(t, "vae_decoder", modelgen.BuildVAEDecoder, modelgen.Options{})
			},
			file: "vae_decoder/model.onnx",
			text: "latent_sample has 8 channels, the UNet (unet/model.onnx) predicts 4",
		},
		{
			name: "vae encoder with 8 latent channels",
			make: func(t *testing.T) string {
				return latents8(t, "vae_encoder", modelgen.BuildVAEEncoder, modelgen.Options{LatentParameters: true})
			},
			file: "vae_encoder/model.onnx",
			text: "latent_parameters has 8 latent channels, the UNet (unet/model.onnx) predicts 4",
		},
		{
			name: "missing model.onnx_data",
			make: func(t *testing.T) string {
				dir := copyDir(t, optimumModel(t))
				remove(t, dir, "unet/model.onnx_data")
				return dir
			},
			file: "unet/model.onnx_data",
			text: "missing (external data of unet/model.onnx)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := tt.make(t)
			err := openBrokenFile(t, dir, tt.file)
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("message %q does not mention %q", err, tt.text)
			}
			if tt.file != "unet/model.onnx_data" && !errors.Is(err, sd.ErrMismatch) {
				t.Errorf("error %v does not match sd.ErrMismatch", err)
			}
		})
	}
}

// TestRewritesSkipFloat16 opens a float16 model with the default rewrites:
// their verification compares float32 outputs, so the graphs are loaded as
// they are, and the report says why.
func TestRewritesSkipFloat16(t *testing.T) {
	testenv.RequireORT(t)
	f, err := sd.OpenFolder(t.Context(), fp16Model(t), sd.WithRewriteCache(t.TempDir()), sd.WithThreads(sd.UNet, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for c, got := range f.Load().Rewrites {
		if got != "skipped: outputs are not float32" {
			t.Errorf("%s: rewrites %q", c, got)
		}
	}
	if got := f.Load().Rewrites[sd.UNet]; got == "" {
		t.Error("the UNet's rewrite report is empty")
	}
}

// replaceModel returns a function that writes a built model over dir's
// component model.onnx, failing the test on any error.
// latents8 is a copy of the legacy model whose VAE half component
// (vae_decoder or vae_encoder) is rebuilt by build for 8 latent channels.
func latents8(t *testing.T, component string, build func(modelgen.Config, modelgen.Options) (*onnxpb.Model, error), o modelgen.Options) string {
	dir := copyDir(t, legacyModel(t))
	c := modelgen.Tiny()
	c.VAE.LatentChannels = 8
	replaceModel(t, dir, component)(build(c, o))
	return dir
}

func replaceModel(t *testing.T, dir, component string) func(*onnxpb.Model, error) {
	return func(m *onnxpb.Model, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if err := onnxpb.WriteFile(filepath.Join(dir, component, "model.onnx"), m, nil); err != nil {
			t.Fatal(err)
		}
	}
}
