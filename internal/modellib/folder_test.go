package modellib

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// TestFolder checks a model folder's content hash: the documented shell
// equivalent gives the same, hidden files do not count and content does,
// a link to the folder hashes as the folder, the cache is used for large
// files while their size and mtime match and not after, and an empty
// folder is an error.
func TestFolder(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"model_index.json": "{}", "unet/model.onnx": "unet", "unet/weights.pb": "w",
		"text_encoder/model.onnx": "te", ".cache/junk": "x", "unet/.DS_Store": "y",
	})
	h := NewHashes(filepath.Join(t.TempDir(), "hashes.json"))
	h1, err := h.Folder(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := h.Model(dir); err != nil || m != h1 {
		t.Errorf("Model of the folder: %s, %v; want %s", m, err, h1)
	}
	if _, err := exec.LookPath("sha256sum"); err == nil {
		out, err := exec.Command("sh", "-c", `(cd "$1" && find . -type f -not -path '*/.*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum`, "sh", dir).Output()
		if err != nil {
			t.Logf("shell equivalent not run: %v", err)
		} else if got := strings.Fields(string(out))[0]; got != h1 {
			t.Errorf("shell equivalent %s, Folder %s", got, h1)
		}
	}
	link := filepath.Join(t.TempDir(), "linked")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	if l, err := h.Folder(link); err != nil || l != h1 {
		t.Errorf("linked folder: %s, %v; want %s", l, err, h1)
	}
	writeFiles(t, dir, map[string]string{".cache/junk": "changed"})
	if got, _ := h.Folder(dir); got != h1 {
		t.Error("a hidden file changed the hash")
	}
	writeFiles(t, dir, map[string]string{"unet/weights.pb": "W"})
	if got, _ := h.Folder(dir); got == h1 {
		t.Error("changed weights kept the hash")
	}

	// every file counts as large: the cache is used while size and mtime
	// match (poison it and see), and not once the mtime changes
	h.cacheFrom = 0
	fresh, err := h.Folder(dir)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := filepath.Abs(filepath.Join(dir, "unet", "model.onnx"))
	h.mu.Lock()
	c := h.cache[p]
	c.SHA256 = strings.Repeat("0", 64)
	h.cache[p] = c
	h.mu.Unlock()
	if got, _ := h.Folder(dir); got == fresh {
		t.Error("the cache was not used")
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(p, later, later); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.Folder(dir); got != fresh {
		t.Error("a stale cache entry was used")
	}

	if _, err := h.Folder(t.TempDir()); err == nil {
		t.Error("empty folder: no error")
	}
}

// TestModels lists a models folder: checkpoint files by their path without
// extension, model folders by their path with their files' total size,
// linked files and folders as what they link to; not a model folder's own
// files, hidden names, other files or a dangling link.
func TestModels(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"a.safetensors": "aaaa", "sub/b.CKPT": "bb", "notes.txt": "n",
		"m/model_index.json": "{}", "m/unet/w.safetensors": "www",
		".hidden/c.safetensors": "c", "sub/.d.safetensors": "d", "plain/e.pt": "e",
	})
	other := t.TempDir()
	writeFiles(t, other, map[string]string{"x/model_index.json": "{}", "y.ckpt": "yyyyy"})
	for link, target := range map[string]string{
		"linked": filepath.Join(other, "x"), "ly.ckpt": filepath.Join(other, "y.ckpt"),
		"gone.safetensors": filepath.Join(other, "missing"),
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	es, err := Models(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	var names []string
	for _, e := range es {
		got[e.Name] = e.Size
		names = append(names, e.Name)
	}
	want := map[string]int64{"a": 4, "linked": 2, "ly": 5, "m": 5, "sub/b": 2}
	if len(got) != len(want) {
		t.Errorf("models %v, want %v", got, want)
	}
	for n, size := range want {
		if got[n] != size {
			t.Errorf("%s: size %d, want %d (listed %v)", n, got[n], size, got)
		}
	}
	if want := []string{"a", "linked", "ly", "m", "sub/b"}; !slices.Equal(names, want) {
		t.Errorf("order %v, want %v", names, want)
	}
}
