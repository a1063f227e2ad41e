package modelgen

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// signature returns "name type[dims]" for every input and output of a
// component.
func signature(t *testing.T, dir, component string) []string {
	t.Helper()
	m, err := onnxpb.ReadIO(filepath.Join(dir, component, ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, v := range m.Inputs {
		s = append(s, "in "+v.Name+" "+v.ShapeString())
	}
	for _, v := range m.Outputs {
		s = append(s, "out "+v.Name+" "+v.ShapeString())
	}
	return s
}

func TestVariantSignatures(t *testing.T) {
	tests := []struct {
		name      string
		opt       Options
		component string
		want      []string
	}{
		{"default text", Options{}, TextEncoderDir, []string{
			"in input_ids int32[batch,sequence]",
			"out last_hidden_state float32[batch,sequence,32]",
			"out pooler_output float32[batch,32]"}},
		{"default unet", Options{}, UNetDir, []string{
			"in sample float32[batch,4,height,width]",
			"in timestep float32[batch]",
			"in encoder_hidden_states float32[batch,sequence,32]",
			"out out_sample float32[batch,4,height,width]"}},
		{"default decoder", Options{}, VAEDecoderDir, []string{
			"in latent_sample float32[batch,4,latent_height,latent_width]",
			"out sample float32[batch,3,height,width]"}},
		{"default encoder", Options{}, VAEEncoderDir, []string{
			"in sample float32[batch,3,height,width]",
			"out latent_sample float32[batch,4,latent_height,latent_width]"}},
		{"int64 ids", Options{IDs: onnxpb.Int64}, TextEncoderDir, []string{
			"in input_ids int64[batch,sequence]",
			"out last_hidden_state float32[batch,sequence,32]",
			"out pooler_output float32[batch,32]"}},
		{"fp16 unet, int64 scalar timestep", Options{FP16: true, Timestep: onnxpb.Int64, TimestepShape: TimestepScalar}, UNetDir, []string{
			"in sample float16[batch,4,height,width]",
			"in timestep int64[]",
			"in encoder_hidden_states float16[batch,sequence,32]",
			"out out_sample float16[batch,4,height,width]"}},
		{"fp16 unet default timestep", Options{FP16: true, TimestepShape: TimestepOne}, UNetDir, []string{
			"in sample float16[batch,4,height,width]",
			"in timestep float16[1]",
			"in encoder_hidden_states float16[batch,sequence,32]",
			"out out_sample float16[batch,4,height,width]"}},
		{"latent parameters", Options{LatentParameters: true}, VAEEncoderDir, []string{
			"in sample float32[batch,3,height,width]",
			"out latent_parameters float32[batch,8,latent_height,latent_width]"}},
		{"static batch", Options{Batch: 1}, UNetDir, []string{
			"in sample float32[1,4,height,width]",
			"in timestep float32[1]",
			"in encoder_hidden_states float32[1,sequence,32]",
			"out out_sample float32[1,4,height,width]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, Tiny(), tt.opt); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, signature(t, dir, tt.component)); diff != "" {
				t.Errorf("signature (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFolderLayout(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, Tiny(), Options{ExternalFile: onnxpb.OptimumExternalFile}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		"model_index.json", "scheduler/scheduler_config.json",
		"tokenizer/vocab.json", "tokenizer/merges.txt", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json",
		"text_encoder/model.onnx", "unet/model.onnx", "unet/model.onnx_data",
		"vae_decoder/model.onnx", "vae_decoder/config.json", "vae_encoder/model.onnx",
	} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	files, err := onnxpb.ExternalFiles(filepath.Join(dir, "unet", ModelFile))
	if err != nil || !cmp.Equal(files, []string{onnxpb.OptimumExternalFile}) {
		t.Errorf("unet external files = %v, %v", files, err)
	}
	var vae struct {
		ScalingFactor  float64 `json:"scaling_factor"`
		LatentChannels int     `json:"latent_channels"`
	}
	shareddir.ReadJSON(t, filepath.Join(dir, "vae_decoder", "config.json"), &vae)
	if vae.ScalingFactor != 0.18215 || vae.LatentChannels != 4 {
		t.Errorf("vae config = %+v", vae)
	}
	var index map[string]any
	shareddir.ReadJSON(t, filepath.Join(dir, "model_index.json"), &index)
	if index["_class_name"] != "OnnxStableDiffusionPipeline" {
		t.Errorf("model_index _class_name = %v", index["_class_name"])
	}
	// The scheduler config is the SD 1.x one (compared with the reference
	// copy when it is available).
	var sched map[string]any
	shareddir.ReadJSON(t, filepath.Join(dir, "scheduler", "scheduler_config.json"), &sched)
	if sched["_class_name"] != "PNDMScheduler" || sched["steps_offset"] != 1.0 {
		t.Errorf("scheduler config = %v", sched)
	}
	if ref := referenceSchedulerConfig(t); ref != nil {
		delete(ref, "_diffusers_version")
		delete(sched, "_diffusers_version")
		if diff := cmp.Diff(ref, sched); diff != "" {
			t.Errorf("scheduler config differs from SD 1.x's (-ref +got):\n%s", diff)
		}
	}
	// The text encoder's vocabulary matches the tokenizer's.
	var vocab map[string]int
	shareddir.ReadJSON(t, filepath.Join(dir, "tokenizer", "vocab.json"), &vocab)
	m, err := onnxpb.ReadIO(filepath.Join(dir, TextEncoderDir, ModelFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range m.Initializers {
		if strings.HasSuffix(in.Name, "token_embedding.weight") && in.Dims[0] != int64(len(vocab)) {
			t.Errorf("token embedding has %d rows, vocabulary %d tokens", in.Dims[0], len(vocab))
		}
	}
}

func referenceSchedulerConfig(t *testing.T) map[string]any {
	root := os.Getenv("SDPIPE_SHARED")
	if root == "" {
		wd, _ := os.Getwd()
		root = filepath.Join(wd, "..", "..", "..", "shared")
	}
	b, err := os.ReadFile(filepath.Join(root, "reference", "sd-config", "scheduler_config.json"))
	if err != nil {
		t.Logf("reference scheduler config not available: %v", err)
		return nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestDeterministic checks that the same seed gives byte-identical files,
// that another seed changes the weights, and that a parameter's values do
// not depend on the rest of the graph.
func TestDeterministic(t *testing.T) {
	a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
	for _, w := range []struct {
		dir  string
		seed uint64
	}{{a, 7}, {b, 7}, {c, 8}} {
		if err := Write(w.dir, Tiny(), Options{Seed: w.seed}); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"text_encoder/model.onnx", "unet/model.onnx", "unet/weights.pb", "vae_decoder/model.onnx", "tokenizer/vocab.json", "tokenizer/merges.txt"} {
		fa, _ := os.ReadFile(filepath.Join(a, f))
		fb, _ := os.ReadFile(filepath.Join(b, f))
		fc, _ := os.ReadFile(filepath.Join(c, f))
		if len(fa) == 0 || !bytes.Equal(fa, fb) {
			t.Errorf("%s differs between two writes with the same seed", f)
		}
		if strings.HasSuffix(f, ".pb") && bytes.Equal(fa, fc) {
			t.Errorf("%s identical for seeds 7 and 8", f)
		}
	}
	// conv_in.weight is the same in the tiny and a wider UNet's first layer
	// when shapes agree, since values depend on seed and name only.
	wide := Tiny()
	wide.UNet.BlockChannels = []int{32, 96}
	m1, _ := BuildUNet(Tiny(), Options{Seed: 7})
	m2, _ := BuildUNet(wide, Options{Seed: 7})
	if !bytes.Equal(initBytes(t, m1, "conv_in.weight"), initBytes(t, m2, "conv_in.weight")) {
		t.Error("conv_in.weight depends on the rest of the graph")
	}
}

func initBytes(t *testing.T, m *onnxpb.Model, name string) []byte {
	t.Helper()
	for _, in := range m.Graph.Initializer {
		if in.Name == name {
			b := make([]byte, in.NumElements()*int64(in.DataType.Size()))
			in.Fill(b)
			return b
		}
	}
	t.Fatalf("no initializer %s", name)
	return nil
}

func TestConfigErrors(t *testing.T) {
	bad := Tiny()
	bad.UNet.BlockChannels = []int{30, 64}
	noUp := Tiny()
	noUp.VAE.BlockChannels = []int{32, 32, 64}
	for _, tt := range []struct {
		name string
		cfg  Config
		opt  Options
	}{
		{"channels not multiple of 32", bad, Options{}},
		{"vae without 8x", noUp, Options{}},
		{"float ids", Tiny(), Options{IDs: onnxpb.Float}},
		{"int32 timestep", Tiny(), Options{Timestep: onnxpb.Int32}},
		{"negative batch", Tiny(), Options{Batch: -1}},
	} {
		if err := Write(t.TempDir(), tt.cfg, tt.opt); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
}
