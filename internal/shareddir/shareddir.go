// Package shareddir finds the read-only reference data the tests read from
// ../shared beside the module root. It imports nothing of the project, so
// that the tests of the packages that import nothing of ours (tokenizer,
// scheduler, rng) and of internal/onnxpb can use it too; internal/testenv
// builds on it.
package shareddir

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// ModuleRoot returns the directory holding go.mod, walking up from the
// working directory, or "" when there is none.
func ModuleRoot() string {
	d, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d
		}
		p := filepath.Dir(d)
		if p == d {
			return ""
		}
		d = p
	}
}

// Path returns ../shared beside the module root ($SDPIPE_SHARED overrides)
// and skips the test when it, or need inside it (a slash-separated path;
// "" for the folder itself), is absent.
func Path(t testing.TB, need string) string {
	t.Helper()
	d := os.Getenv("SDPIPE_SHARED")
	if d == "" {
		root := ModuleRoot()
		if root == "" {
			t.Skip("no go.mod above the working directory: cannot locate ../shared")
		}
		d = filepath.Join(root, "..", "shared")
	}
	if _, err := os.Stat(filepath.Join(d, filepath.FromSlash(need))); err != nil {
		t.Skipf("reference data not found at %s (set SDPIPE_SHARED to the shared/ folder): %v", d, err)
	}
	return d
}

// File returns the path of need (a slash-separated path) inside ../shared,
// as Path finds it, and skips the test when it is absent.
func File(t testing.TB, need string) string {
	t.Helper()
	return filepath.Join(Path(t, need), filepath.FromSlash(need))
}

// ReadJSON decodes the JSON file at path (a reference file, or one a test
// wrote) into v, and fails the test when it cannot be read or decoded.
func ReadJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}
