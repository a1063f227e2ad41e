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

// TestFamilies generates every tiny family and checks what inspect shows of
// each one's distinctive inputs and outputs.
func TestFamilies(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{"-config", "tiny-sdxl"}, []string{
			"text_encoder_2: opset 17", "in  text_embeds            float32[batch_size,40]", "in  time_ids               float32[batch_size,6]",
			"in  timestep               int64[steps]", "out hidden_states.3", "out latent_parameters"}},
		{[]string{"-config", "tiny-sdxl", "-timestep", "float32", "-timestep-shape", "scalar", "-ids", "int64", "-external", "model.onnx_data"}, []string{
			"in  timestep               float32[]", "in  input_ids              int64[batch_size,sequence_length]", "external data model.onnx_data"}},
		{[]string{"-config", "tiny-lcm"}, []string{"in  timestep_cond          float32[batch_size,16]"}},
		{[]string{"-config", "tiny-inpaint"}, []string{"in  sample                 float32[batch,9,height,width]"}},
		{[]string{"-config", "tiny-inpaint", "-channels-dim"}, []string{"in  sample                 float32[batch,channels,height,width]"}},
		{[]string{"-config", "tiny-sd2", "-hidden-states"}, []string{"out hidden_states.2", "float32[batch,sequence,48]"}},
		{[]string{"-config", "tiny-taesd"}, []string{"vae_encoder: opset 17", "out latent_sample          float32[batch,4,latent_height,latent_width]"}},
	} {
		dir := filepath.Join(t.TempDir(), "m")
		var out bytes.Buffer
		if err := run(append(tt.args, "-out", dir), &out); err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		out.Reset()
		if err := run([]string{"-inspect", dir}, &out); err != nil {
			t.Fatal(err)
		}
		for _, want := range tt.want {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%q: inspect output lacks %q:\n%s", tt.args, want, out.String())
			}
		}
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-config", "sd3", "-out", t.TempDir()},
		{"-ids", "float32", "-out", t.TempDir()},
		{"-timestep-shape", "matrix", "-out", t.TempDir()},
		{"-attention", "flash", "-out", t.TempDir()},
		{"-layout", "onnxruntime", "-out", t.TempDir()},
		{"-config", "huge-taesd", "-out", t.TempDir()},
		{},
	} {
		if err := run(args, &bytes.Buffer{}); err == nil {
			t.Errorf("run(%q): no error", args)
		}
	}
}
