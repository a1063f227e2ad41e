package sd_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// userProgram is a program in another module: it can import only the
// module's public packages, so it proves that sd and models are enough for
// txt2img with progress, the per-step hook, cancellation and PNG output.
const userProgram = `package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run() error {
	ctx := context.Background()
	dir, err := models.DefaultDir()
	if err != nil {
		return err
	}
	m, err := sd.Open(ctx, dir, sd.WithThreads(sd.UNet, 1), sd.WithoutVAEEncoder())
	if err != nil {
		return err
	}
	defer m.Close()
	steps := 0
	h, err := m.Submit(ctx, sd.Request{Prompt: "a red circle on a blue background", Steps: 4, Seed: 42,
		OnStep: func(s sd.Step) { steps++ }})
	if err != nil {
		return err
	}
	events := 0
	for range h.Progress() {
		events++
	}
	res, err := h.Wait(ctx)
	if err != nil {
		return err
	}
	f, err := os.Create(os.Args[1])
	if err != nil {
		return err
	}
	if err := res.EncodePNG(f, 0); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	c, err := m.Submit(ctx, sd.Request{Prompt: "a green square", Steps: 500})
	if err != nil {
		return err
	}
	c.Cancel()
	_, err = c.Wait(ctx)
	_, err2 := m.Submit(ctx, sd.Request{Width: 65})
	var re *sd.RequestError
	// a device this ONNX Runtime build lacks: an error the program can match
	_, err3 := sd.Open(ctx, dir, sd.WithDevice(sd.VAEDecoder, sd.CoreML), sd.WithoutVAEEncoder())
	var de *sd.DeviceError
	fmt.Printf("size %v seed %d guidance %v events %d steps %d canceled %v invalid %v device %v\n",
		res.Images[0].Bounds().Size(), res.Seeds[0], *res.Request.GuidanceScale, events, steps,
		errors.Is(err, context.Canceled), errors.As(err2, &re) && re.Field == "Width",
		errors.As(err3, &de) && de.Component == sd.VAEDecoder && de.Device == sd.CoreML)
	return nil
}
`

// TestFromAnotherModule writes a module of its own that requires this one
// (replaced by the checkout), builds it with the same Go, GOFLAGS and
// GOCACHE, and runs a txt2img through the public API alone.
func TestFromAnotherModule(t *testing.T) {
	testenv.RequireORT(t)
	if testing.Short() {
		t.Skip("builds and runs a program (-short)")
	}
	root := testenv.ModuleRoot()
	dir := t.TempDir()
	gomod := "module example.com/user\n\ngo 1.26.0\n\nrequire github.com/sdpipe/sdpipe v0.0.0\n\nreplace github.com/sdpipe/sdpipe => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"go.mod": []byte(gomod), "go.sum": sum, "main.go": []byte(userProgram)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	gobin, err := exec.LookPath("go") // go test puts its own GOROOT/bin first on PATH
	if err != nil {
		t.Skipf("no go command: %v", err)
	}
	out := filepath.Join(dir, "out.png")
	cmd := exec.CommandContext(t.Context(), gobin, "run", "-mod=mod", ".", out)
	cmd.Dir = dir
	// the module cache has every dependency the build needs: try without the network first
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOPROXY=off") // GOFLAGS and GOCACHE as this test's
	b, err := cmd.CombinedOutput()
	if err != nil && bytes.Contains(b, []byte("module lookup disabled by GOPROXY=off")) {
		// -mod=mod resolves the whole module graph, whose go.mod files
		// this machine's module cache may lack (the build itself needs
		// none): fetch them through the environment's module proxy, as a
		// user's build would
		cmd = exec.CommandContext(t.Context(), gobin, "run", "-mod=mod", ".", out)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GOWORK=off")
		if b, err = cmd.CombinedOutput(); err != nil && (bytes.Contains(b, []byte("GOPROXY=off")) || bytes.Contains(b, []byte("dial tcp"))) {
			t.Skipf("the module cache lacks a module of the dependency graph and the module proxy cannot be reached:\n%s", b)
		}
	}
	if err != nil {
		t.Fatalf("go run in another module: %v\n%s", err, b)
	}
	want := "size (64,64) seed 42 guidance 2.5 events 5 steps 5 canceled true invalid true device true"
	if got := strings.TrimSpace(string(b)); !strings.HasSuffix(got, want) {
		t.Errorf("the program printed\n%s\nwant\n%s", got, want)
	}
	if st, err := os.Stat(out); err != nil || st.Size() == 0 {
		t.Errorf("no PNG written: %v", err)
	}
}
