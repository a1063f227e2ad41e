package sd_test

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// tinyCheckpoint returns ../shared/reference/tiny-ckpt/<name> and the
// shared CLIP tokenizer folder; the model's configs lie beside it.
func tinyCheckpoint(t *testing.T, name string) (string, string) {
	t.Helper()
	testenv.RequireORT(t)
	return shareddir.File(t, "reference/tiny-ckpt/"+name), shareddir.File(t, "clip-tokenizer")
}

// TestOpenCheckpoint opens a single-file checkpoint with sd.Open, by its
// path and by a folder holding it, and reproduces diffusers' image.
func TestOpenCheckpoint(t *testing.T) {
	path, tok := tinyCheckpoint(t, "tiny-sd.safetensors")
	ref := testenv.LoadTinyReference(t)
	folder := t.TempDir()
	if err := os.Symlink(path, filepath.Join(folder, "tiny-sd.safetensors")); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, folder} {
		opts := []sd.Option{sd.WithTokenizer(tok), sd.WithThreads(sd.UNet, 1), sd.WithCheckpointCache(t.TempDir())}
		if p == folder { // the model's configs (its 4 text heads) lie beside the checkpoint
			for _, n := range []string{"text_encoder_config.json", "unet_config.json", "vae_config.json"} {
				if err := os.Symlink(filepath.Join(filepath.Dir(path), n), filepath.Join(folder, n)); err != nil {
					t.Fatal(err)
				}
			}
		}
		m, err := sd.Open(t.Context(), p, opts...)
		if err != nil {
			t.Fatal(err)
		}
		res, err := m.Generate(t.Context(), sd.Request{Prompt: ref.Call.Prompt, Width: 64, Height: 64, Steps: 20, GuidanceScale: new(7.5), Latents: ref.InitialLatents})
		if err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), ref.ORT.Image); d > 1e-4 {
			t.Errorf("%s: image differs from diffusers' by %g", p, d)
		}
		if !strings.Contains(res.Infotexts[0], "Model: tiny-sd") {
			t.Errorf("infotext %q does not name the checkpoint", res.Infotexts[0])
		}
		if err := m.Close(); err != nil {
			t.Error(err)
		}
	}
}

// TestOpenCheckpointPerRequest opens the checkpoint with a LoRA folder and
// an embeddings folder: requests apply the LoRA by name.
func TestOpenCheckpointPerRequest(t *testing.T) {
	path, tok := tinyCheckpoint(t, "tiny-sd.safetensors")
	loras := t.TempDir()
	lora := filepath.Join(filepath.Dir(filepath.Dir(path)), "tiny-lora", "tiny-lora.safetensors")
	if err := os.Symlink(lora, filepath.Join(loras, "tiny-lora.safetensors")); err != nil {
		t.Fatal(err)
	}
	m, err := sd.Open(t.Context(), path, sd.WithTokenizer(tok), sd.WithLoRADir(loras), sd.WithEmbeddingsDir(t.TempDir()), sd.WithCheckpointCache(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ref := testenv.LoadTinyReference(t)
	req := sd.Request{Prompt: "<lora:tiny-lora:0.5> " + ref.Call.Prompt, Width: 64, Height: 64, Steps: 20, GuidanceScale: new(7.5), Latents: ref.InitialLatents}
	res, err := m.Generate(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), ref.ORT.Image); d < 1e-2 {
		t.Errorf("the LoRA changed the image by only %g", d)
	}
	// A1111's "Lora hashes", as the service writes them: the addnet hash
	// (SHA-256 of the safetensors data after its header), 12 hex digits
	b, err := os.ReadFile(lora)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b[8+binary.LittleEndian.Uint64(b[:8]):])
	want := fmt.Sprintf(`Lora hashes: "tiny-lora: %x"`, sum[:6])
	if len(res.Infotexts) != 1 || !strings.Contains(res.Infotexts[0], want) {
		t.Errorf("infotexts %q lack %s", res.Infotexts, want)
	}
	if got := m.LoRAHashes(sd.Request{Prompt: "<lora:tiny-lora:1> a", LoRAs: []sd.LoRA{{Name: "tiny-lora", Multiplier: 1}, {Name: "nope"}}}); got != fmt.Sprintf("tiny-lora: %x", sum[:6]) {
		t.Errorf("LoRAHashes: %q", got)
	}
	req.Prompt = ref.Call.Prompt
	if res, err = m.Generate(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(res.Infotexts[0], "Lora hashes") {
		t.Errorf("without a LoRA, the infotext has Lora hashes: %q", res.Infotexts[0])
	}
	if d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), ref.ORT.Image); d > 1e-4 {
		t.Errorf("without LoRA: image differs from diffusers' by %g", d)
	}
	req.Prompt = "<lora:nope:1> x"
	if _, err := m.Generate(t.Context(), req); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown LoRA: %v", err)
	}
	_ = m.Load()
}

func TestOpenCheckpointErrors(t *testing.T) {
	path, _ := tinyCheckpoint(t, "tiny-sd.safetensors")
	dir := t.TempDir()
	_, err := sd.Open(t.Context(), path, sd.WithTokenizer(dir), sd.WithCheckpointCache(t.TempDir()))
	if err == nil || !strings.Contains(err.Error(), "vocab.json") {
		t.Errorf("tokenizer folder without files: %v", err)
	}
	two := t.TempDir()
	for _, n := range []string{"a.safetensors", "b.ckpt"} {
		os.WriteFile(filepath.Join(two, n), []byte("x"), 0o644)
	}
	if _, err := sd.Open(t.Context(), two); err == nil || !strings.Contains(err.Error(), "2 checkpoints") {
		t.Errorf("two checkpoints: %v", err)
	}
}
