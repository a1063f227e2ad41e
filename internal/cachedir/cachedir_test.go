package cachedir

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestCacheDir(t *testing.T) {
	t.Setenv(Env, "")
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if got, want := Dir(), filepath.Join("/x/cache", "sdpipe"); got != want {
		t.Errorf("Dir() with XDG_CACHE_HOME = %s, want %s", got, want)
	}
	t.Setenv(Env, "/y")
	if got := Dir(); got != "/y" {
		t.Errorf("Dir() with %s = %s, want /y", Env, got)
	}
}

// TestBuild checks that concurrent builders leave one valid folder and no
// temporary one, that a valid folder is kept, and that a damaged one is
// replaced.
func TestBuild(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "sub", "entry")
	valid := func(dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, "f"))
		if err == nil && string(b) != "ok" {
			err = errors.New("damaged")
		}
		return err
	}
	var fills sync.WaitGroup
	var mu sync.Mutex
	n := 0
	fill := func(tmp string) error {
		mu.Lock()
		n++
		mu.Unlock()
		return os.WriteFile(filepath.Join(tmp, "f"), []byte("ok"), 0o644)
	}
	for range 8 {
		fills.Go(func() {
			if err := Build(dir, valid, fill); err != nil {
				t.Error(err)
			}
		})
	}
	fills.Wait()
	if err := valid(dir); err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) != 1 {
		t.Errorf("%d entries beside the folder, want it alone: %v", len(ents), ents)
	}
	before := n
	if err := Build(dir, valid, fill); err != nil || n != before {
		t.Errorf("a valid folder was rebuilt (err %v)", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("bad"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Build(dir, valid, fill); err != nil || valid(dir) != nil {
		t.Errorf("a damaged folder was not replaced: %v, %v", err, valid(dir))
	}
	if err := Build(filepath.Join(root, "never"), valid, func(string) error { return nil }); err == nil {
		t.Error("a fill that makes no valid folder was accepted")
	}
}
