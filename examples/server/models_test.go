package main

import (
	"context"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestRunModelsDir runs the command on a models folder of two generated
// tiny models with room for one: both are listed, a request runs the one
// it names (the other loads on demand, evicting the first), and run
// returns nil on shutdown.
func TestRunModelsDir(t *testing.T) {
	testenv.RequireORT(t)
	dir := t.TempDir()
	for i, n := range []string{"a", "b"} {
		if err := modelgen.Write(filepath.Join(dir, n), modelgen.Tiny(), modelgen.Options{Seed: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	var size int64 // a's files: the budget holds one model, not two
	filepath.WalkDir(filepath.Join(dir, "a"), func(p string, d fs.DirEntry, err error) error {
		if info, ierr := os.Stat(p); err == nil && ierr == nil && !d.IsDir() {
			size += info.Size()
		}
		return err
	})
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	var stderr testenv.SyncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-addr", "127.0.0.1:0", "-models-dir", dir, "-models-memory", strconv.FormatInt(size*3/2, 10), "-default-model", "b",
			"-threads", "1", "-warmup=false", "-data", "none"}, &stderr)
	}()
	base := listening(t, done, &stderr)
	call := func(method, path, body string) string {
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return string(b)
	}
	if list := call("GET", "/sdapi/v1/sd-models", ""); !strings.Contains(list, `"model_name":"a"`) || !strings.Contains(list, `"model_name":"b"`) {
		t.Errorf("sd-models: %s", list)
	}
	if opts := call("GET", "/sdapi/v1/options", ""); !strings.Contains(opts, `"sd_model_checkpoint":"b [`) {
		t.Errorf("the default is not -default-model b: %.300s", opts)
	}
	if out := call("POST", "/sdapi/v1/txt2img", `{"steps":2,"override_settings":{"sd_model_checkpoint":"a"}}`); !strings.Contains(out, `Model: a,`) {
		t.Errorf("the request for a: %.300s", out)
	}
	if !strings.Contains(stderr.String(), "model evicted") {
		t.Errorf("loading a under a budget for one model evicted nothing:\n%s", stderr.String())
	}
	stop()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}
