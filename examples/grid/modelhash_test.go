package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHashModel(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"model_index.json": "{}", "unet/model.onnx": "unet", "unet/weights.pb": "w",
		"text_encoder/model.onnx": "te", ".cache/junk": "x", "unet/.DS_Store": "y",
	})
	cache := filepath.Join(t.TempDir(), "cache.json")
	h1, err := HashModel(dir, cache)
	if err != nil {
		t.Fatal(err)
	}
	if h2, err := HashModel(dir, ""); err != nil || h2 != h1 {
		t.Fatalf("without cache: %s, %v; want %s", h2, err, h1)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		// the documented shell equivalent
		out, err := exec.Command("sh", "-c", `(cd "$1" && find . -type f -not -path '*/.*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum`, "sh", dir).Output()
		if err != nil {
			t.Logf("shell equivalent not run: %v", err)
		} else if got := strings.Fields(string(out))[0]; got != h1 {
			t.Errorf("shell equivalent %s, HashModel %s", got, h1)
		}
	}
	// hidden files do not count; content does
	writeFiles(t, dir, map[string]string{".cache/junk": "changed"})
	if h, _ := HashModel(dir, cache); h != h1 {
		t.Error("a hidden file changed the hash")
	}
	writeFiles(t, dir, map[string]string{"unet/weights.pb": "W"})
	if h, _ := HashModel(dir, cache); h == h1 {
		t.Error("changed weights kept the hash")
	}

	// the cache is used when size and mtime match: poison it and see
	b, err := os.ReadFile(cache)
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]map[string]map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // keep the nanosecond mtimes exact
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	c[abs]["unet/model.onnx"]["sha256"] = strings.Repeat("0", 64)
	b, _ = json.Marshal(c)
	if err := os.WriteFile(cache, b, 0o644); err != nil {
		t.Fatal(err)
	}
	fresh, _ := HashModel(dir, "")
	if h, _ := HashModel(dir, cache); h == fresh {
		t.Error("the cache was not used")
	}
	// …and not when the file's mtime changes
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(filepath.Join(dir, "unet", "model.onnx"), later, later); err != nil {
		t.Fatal(err)
	}
	if h, _ := HashModel(dir, cache); h != fresh {
		t.Error("a stale cache entry was used")
	}

	if _, err := HashModel(t.TempDir(), ""); err == nil {
		t.Error("empty folder: no error")
	}
}
