package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestSageMakerContainer runs the built command as SageMaker runs a
// container: "serve" as the only argument, the port in
// SAGEMAKER_BIND_TO_PORT, bound on all interfaces, then GET /ping, POST
// /invocations with JSON and with Accept: image/png, and SIGTERM.
func TestSageMakerContainer(t *testing.T) {
	testenv.RequireORT(t)
	bin := filepath.Join(t.TempDir(), "server")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	port := testenv.FreePort(t)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "serve")
	cmd.Env = append(os.Environ(), fmt.Sprintf("SAGEMAKER_BIND_TO_PORT=%d", port), "SM_MODEL_DIR="+t.TempDir())
	var stderr testenv.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	testenv.WaitOK(t, base+"/ping", 90*time.Second, 50*time.Millisecond, stderr.String)
	if log := stderr.String(); !strings.Contains(log, fmt.Sprintf("url=http://0.0.0.0:%d", port)) && !strings.Contains(log, fmt.Sprintf("url=http://[::]:%d", port)) {
		t.Errorf("not listening on all interfaces:\n%s", stderr.String())
	}
	invoke := func(accept string) (*http.Response, []byte) {
		req, _ := http.NewRequest(http.MethodPost, base+"/invocations", strings.NewReader(`{"prompt":"a red circle","num_inference_steps":3,"seed":1}`))
		req.Header.Set("Content-Type", "application/json")
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	resp, b := invoke("")
	var out struct {
		GeneratedImages []string `json:"generated_images"`
	}
	if err := json.Unmarshal(b, &out); err != nil || resp.StatusCode != 200 || len(out.GeneratedImages) != 1 {
		t.Errorf("JSON invocation: %d %v %.200s", resp.StatusCode, err, b)
	}
	resp, b = invoke("image/png")
	if resp.Header.Get("Content-Type") != "image/png" {
		t.Errorf("Accept image/png: Content-Type %q", resp.Header.Get("Content-Type"))
	}
	if img, err := png.Decode(bytes.NewReader(b)); err != nil || img.Bounds().Dx() != 64 {
		t.Errorf("raw PNG: %v", err)
	}
	if resp, _ := invoke("text/html"); resp.StatusCode != http.StatusNotAcceptable {
		t.Errorf("Accept text/html: %d, want 406", resp.StatusCode)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("after SIGTERM: %v\n%s", err, stderr.String())
	}
}
