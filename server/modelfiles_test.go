package server

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestLoRAsAndEmbeddingsListed serves the tiny single-file checkpoint
// with a LoRA folder holding tiny-lora: /sdapi/v1/loras lists it in
// A1111's shape, a prompt applies it by that name (and the image changes),
// and /sdapi/v1/embeddings answers in A1111's shape (the folder is empty).
func TestLoRAsAndEmbeddingsListed(t *testing.T) {
	testenv.RequireORT(t)
	ckpt := shareddir.File(t, "reference/tiny-ckpt/tiny-sd.safetensors")
	loras := t.TempDir()
	if err := os.Symlink(shareddir.File(t, "reference/tiny-lora/tiny-lora.safetensors"), filepath.Join(loras, "tiny-lora.safetensors")); err != nil {
		t.Fatal(err)
	}
	m, err := sd.Open(t.Context(), ckpt, sd.WithTokenizer(shareddir.File(t, "clip-tokenizer")), sd.WithLoRADir(loras),
		sd.WithEmbeddingsDir(t.TempDir()), sd.WithCheckpointCache(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	_, ts := newServerOn(t, m, Config{ModelName: "tiny-sd"})
	shapes := loadShapes(t)

	r := get(t, ts.URL+"/sdapi/v1/loras")
	var list []map[string]any
	if err := json.Unmarshal(r.body, &list); err != nil || r.code != 200 {
		t.Fatalf("loras: %d %s", r.code, r.body)
	}
	var raw any
	json.Unmarshal(r.body, &raw)
	checkShape(t, "loras", shapes["GET /sdapi/v1/loras"], raw)
	if len(list) != 1 || list[0]["name"] != "tiny-lora" || !strings.HasSuffix(list[0]["path"].(string), "tiny-lora.safetensors") {
		t.Fatalf("loras: %s", r.body)
	}
	r = get(t, ts.URL+"/sdapi/v1/embeddings")
	json.Unmarshal(r.body, &raw)
	checkShape(t, "embeddings", shapes["GET /sdapi/v1/embeddings"], raw)

	var with, without struct {
		Images []string
		Info   string
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"<lora:tiny-lora:1> a cat","steps":3,"seed":1,"width":64,"height":64}`); r.code != 200 {
		t.Fatalf("txt2img with the LoRA: %d %s", r.code, r.body)
	} else {
		r.json(t, &with)
	}
	post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"a cat","steps":3,"seed":1,"width":64,"height":64}`).json(t, &without)
	if len(with.Images) != 1 || len(without.Images) != 1 || with.Images[0] == without.Images[0] {
		t.Error("the LoRA named in the prompt changed nothing")
	}
	// A1111's "Lora hashes": the addnet hash, SHA-256 of the safetensors
	// data after its header, first 12 hex digits
	b, err := os.ReadFile(filepath.Join(loras, "tiny-lora.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	sum := sha256.Sum256(b[8+n:])
	want := fmt.Sprintf(`Lora hashes: "tiny-lora: %x"`, sum[:6])
	var iw, io struct{ Infotexts []string }
	json.Unmarshal([]byte(with.Info), &iw)
	json.Unmarshal([]byte(without.Info), &io)
	if len(iw.Infotexts) != 1 || len(io.Infotexts) != 1 || !strings.Contains(iw.Infotexts[0], want) || strings.Contains(io.Infotexts[0], "Lora hashes") {
		t.Errorf("infotexts: with the LoRA %q, without %q; want %s in the first only", iw.Infotexts, io.Infotexts, want)
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"<lora:nope:1> a cat","steps":1}`); r.code != 400 || !strings.Contains(string(r.body), "nope") {
		t.Errorf("an unknown LoRA: %d %s", r.code, r.body)
	}
}
