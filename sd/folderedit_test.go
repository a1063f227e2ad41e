package sd_test

// Helpers that copy a model folder and damage it, for the folder tests.

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// copyDir copies the folder src into a new temporary folder and returns it.
// Only contents are copied: the reference files are read-only, the copies
// are writable.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "model")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		out := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(w, in); err != nil {
			w.Close()
			return err
		}
		return w.Close()
	})
	if err != nil {
		t.Fatalf("copying %s: %v", src, err)
	}
	return dst
}

// referenceCopy returns a writable copy of the tiny reference model.
func referenceCopy(t *testing.T) string {
	t.Helper()
	return copyDir(t, testenv.TinyReferenceModel(t))
}

func writeFile(t *testing.T, dir, rel, content string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.FromSlash(rel)), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, dir, rel string) {
	t.Helper()
	if err := os.RemoveAll(filepath.Join(dir, filepath.FromSlash(rel))); err != nil {
		t.Fatal(err)
	}
}

// truncateHalf cuts the file rel to half its size.
func truncateHalf(t *testing.T, dir, rel string) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, st.Size()/2); err != nil {
		t.Fatal(err)
	}
}

// copyFile replaces dst (relative to dir) with a copy of src.
func copyFile(t *testing.T, dir, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(src)))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, dst, string(b))
}

// editModel rewrites the model file rel through f, keeping its data inside
// the file (so it only suits models without external data).
func editModel(t *testing.T, dir, rel string, f func(*onnxpb.Model)) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	m := testenv.ReadModel(t, p)
	f(m)
	if err := onnxpb.WriteFile(p, m, nil); err != nil {
		t.Fatal(err)
	}
}

// editJSON rewrites the JSON object in rel through f.
func editJSON(t *testing.T, dir, rel string, f func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, filepath.FromSlash(rel))
	var v map[string]any
	shareddir.ReadJSON(t, p, &v)
	f(v)
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, rel, string(b))
}

// isErr returns a check that an error matches target (errors.Is).
func isErr(target error) func(error) bool {
	return func(err error) bool { return errors.Is(err, target) }
}

func isType[E error](err error) bool {
	_, ok := errors.AsType[E](err)
	return ok
}
