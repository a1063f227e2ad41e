package server

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Contract tests with real clients nobody here wrote: the official OpenAI
// Node SDK (pinned in testdata/openai-node/package.json, installed from
// npm) and the official OpenAI Go SDK (pinned in testdata/openai-go/go.mod,
// a module of its own so the SDK stays out of sdpipe's go.mod). Each drives
// the server unchanged but for the base URL: generate (n, size, quality,
// jpeg, url), stream with partial images, edit, the error envelope, models.

// copyDir copies a testdata folder's files (not its subfolders).
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func runClient(t *testing.T, dir string, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestOpenAINodeSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node not found: install Node.js and npm (apt-get install -y nodejs npm) to run the OpenAI Node SDK contract test")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm not found: install it (apt-get install -y npm) to run the OpenAI Node SDK contract test")
	}
	_, ts := newServer(t, Config{MaxSize: 256, FastSteps: 3, QualitySteps: 4})
	dir := copyDir(t, "testdata/openai-node")
	if out, err := runClient(t, dir, 3*time.Minute, npm, "install", "--no-audit", "--no-fund", "--loglevel=error"); err != nil {
		t.Skipf("npm install of the pinned OpenAI SDK failed (no npm registry?): %v\n%s", err, out)
	}
	out, err := runClient(t, dir, 3*time.Minute, node, "check.mjs", ts.URL)
	if err != nil || !strings.Contains(out, "all checks passed") {
		t.Fatalf("the OpenAI Node SDK against the server: %v\n%s", err, out)
	}
}

func TestOpenAIGoSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the OpenAI Go SDK: not in -short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not found in PATH")
	}
	_, ts := newServer(t, Config{MaxSize: 256, FastSteps: 3, QualitySteps: 4})
	dir, err := filepath.Abs("testdata/openai-go")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runClient(t, dir, 5*time.Minute, goBin, "mod", "download"); err != nil {
		t.Skipf("downloading the pinned OpenAI Go SDK failed (no module proxy?): %v\n%s", err, out)
	}
	out, err := runClient(t, dir, 5*time.Minute, goBin, "run", ".", ts.URL)
	if err != nil || !strings.Contains(out, "all checks passed") {
		t.Fatalf("the OpenAI Go SDK against the server: %v\n%s", err, out)
	}
}
