package shareddir

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFile checks that File returns the full path of what it is asked for
// inside $SDPIPE_SHARED, and skips the test when that is absent.
func TestFile(t *testing.T) {
	d := t.TempDir()
	if err := os.MkdirAll(filepath.Join(d, "reference", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SDPIPE_SHARED", d)
	if got, want := File(t, "reference/x"), filepath.Join(d, "reference", "x"); got != want {
		t.Errorf("File(reference/x) = %q, want %q", got, want)
	}
	var ran bool
	t.Run("absent", func(t *testing.T) {
		File(t, "reference/y")
		ran = true
	})
	if ran {
		t.Error("File(reference/y) returned for an absent path; want a skip")
	}
}
