package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateAndInspect(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "m")
	var out bytes.Buffer
	if err := run([]string{"-config", "tiny", "-out", dir, "-ids", "int64", "-timestep-shape", "one", "-external", "model.onnx_data"}, &out); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := run([]string{"-inspect", dir}, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"input_ids              int64[batch,sequence]",
		"timestep               float32[1]",
		"external data model.onnx_data",
		"out sample                 float32[batch,3,height,width]",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("inspect output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-config", "sd3", "-out", t.TempDir()},
		{"-ids", "float32", "-out", t.TempDir()},
		{"-timestep-shape", "matrix", "-out", t.TempDir()},
		{"-attention", "flash", "-out", t.TempDir()},
		{},
	} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): no error", args)
		}
	}
}
