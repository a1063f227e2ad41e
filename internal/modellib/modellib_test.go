package modellib

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// TestHashes checks the hashes of tiny-lora against its checks.json:
// the file's SHA-256, and the addnet hash = kohya's sshs_model_hash.
func TestHashes(t *testing.T) {
	lora := shareddir.File(t, "reference/tiny-lora/tiny-lora.safetensors")
	cache := filepath.Join(t.TempDir(), "hashes.json")
	h := NewHashes(cache)
	s, err := h.SHA256(lora)
	if err != nil {
		t.Fatal(err)
	}
	if s != "789d8ee72513c4b7a32461f4fbf3d179e6f4e3395327ccb096a1500507d90beb" {
		t.Errorf("sha256 %s", s)
	}
	a, err := h.AddNet(lora)
	if err != nil {
		t.Fatal(err)
	}
	if a != "2f0169198d8cace411c628d9555ae0faee4eb0e1a442b858fc7728f70d4e1af7" {
		t.Errorf("addnet %s, want kohya's sshs_model_hash", a)
	}
	if l, _ := h.LoRAHash(lora); l != "2f0169198d8c" {
		t.Errorf("LoRA hash %s", l)
	}
	if m, _ := h.ModelHash(lora); m != "789d8ee725" {
		t.Errorf("model hash %s", m)
	}
	// The cache is reused by a new instance, and dropped when the file changes.
	h2 := NewHashes(cache)
	if len(h2.cache) != 1 {
		t.Fatalf("cache has %d entries", len(h2.cache))
	}
	f := filepath.Join(t.TempDir(), "x.ckpt")
	os.WriteFile(f, []byte("abc"), 0o644)
	s1, _ := h2.SHA256(f)
	os.WriteFile(f, []byte("abd"), 0o644)
	os.Chtimes(f, time.Now().Add(time.Hour), time.Now().Add(time.Hour))
	s2, _ := h2.SHA256(f)
	if s1 != "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" || s1 == s2 {
		t.Errorf("hashes %s then %s", s1, s2)
	}
	if _, err := h2.AddNet(f); err == nil {
		t.Error("addnet of a non-safetensors file: no error")
	}
}

func TestList(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"a.safetensors", "sub/b.ckpt", "sub/c.pt", "d.txt", ".hidden/e.safetensors", "f.bin"} {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(dir, p), []byte("x"), 0o644)
	}
	names := func(k Kind) []string {
		es, err := List(dir, k)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Name)
		}
		return out
	}
	if got := names(Checkpoint); !slices.Equal(got, []string{"a", "sub/b"}) {
		t.Errorf("checkpoints %v", got)
	}
	if got := names(LoRA); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("LoRAs %v", got)
	}
	if got := names(Embedding); !slices.Equal(got, []string{"a", "c", "f"}) {
		t.Errorf("embeddings %v", got)
	}
}

// TestHashesUnwritableCache: a cache file that cannot be written (a
// read-only container) still gives the hash.
func TestHashesUnwritableCache(t *testing.T) {
	f := filepath.Join(t.TempDir(), "a.bin")
	if err := os.WriteFile(f, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := NewHashes(filepath.Join(f, "not-a-folder", "hashes.json"))
	s, err := h.SHA256(f)
	if err != nil || s != "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824" {
		t.Errorf("SHA256 with an unwritable cache: %q, %v", s, err)
	}
}
