package modelgen

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestFullRuns writes full-size folders of the configurations named in
// SDGEN_FULL (comma-separated, e.g. "sdxl,sd21,lcm-sd15,sd15-inpaint,taesd")
// and runs each component once on small inputs (8×8 latents), one session
// at a time, logging the write and open times and the process's peak RSS.
// It is opt-in and heavy (SDXL: 14 GB of disk, 11 GB of RAM): run it under
// flock /work/coord/heavy.lock.
func TestFullRuns(t *testing.T) {
	names := testenv.Measure(t, "SDGEN_FULL", "sdxl,sd21,... (gigabytes of disk and RAM) to write and run full-size folders")
	vocab := GenerateVocabulary(0).Size()
	for _, name := range strings.Split(names, ",") {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			start := time.Now()
			comps := []string{VAEEncoderDir, VAEDecoderDir}
			if strings.HasSuffix(name, "taesd") {
				tc, err := TAESDConfigByName(name)
				if err != nil {
					t.Fatal(err)
				}
				if err := WriteTAESD(dir, tc, Options{}); err != nil {
					t.Fatal(err)
				}
			} else {
				cfg, err := ConfigByName(name)
				if err != nil {
					t.Fatal(err)
				}
				if err := Write(dir, cfg, Options{}); err != nil {
					t.Fatal(err)
				}
				comps = append(comps, TextEncoderDir, UNetDir)
				if cfg.Text2 != nil {
					comps = append(comps, TextEncoder2Dir)
				}
			}
			t.Logf("%s: written in %.0f s", name, time.Since(start).Seconds())
			for _, c := range comps {
				path := filepath.Join(dir, c, ModelFile)
				io, err := onnxpb.ReadIO(path)
				if err != nil {
					t.Fatal(err)
				}
				ins, outs, err := ort.ReadIO(path)
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{})
				if err != nil {
					t.Fatalf("%s: %v", c, err)
				}
				open := time.Since(start)
				out := make([]ort.Tensor, len(outs))
				if err := s.Run(t.Context(), feed(t, s, c, vocab), out); err != nil {
					s.Close()
					t.Fatalf("%s: %v", c, err)
				}
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				for i, o := range out {
					if _, std := stats(t, c+" "+outs[i].Name, o.Data.([]float32)); std == 0 || std > 100 {
						t.Errorf("%s %s: std %.3g", c, outs[i].Name, std)
					}
				}
				t.Logf("%s %s: %.2f GB of weights (external %v), opened in %.1f s, peak RSS so far %.2f GiB",
					name, c, float64(weightBytes(io))/1e9, io.ExternalFiles(), open.Seconds(), testenv.ProcStatus(t, "VmHWM")/(1<<30))
			}
		})
	}
}

func weightBytes(io *onnxpb.IO) int64 {
	var n int64
	for _, in := range io.Initializers {
		n += in.NumBytes()
	}
	return n
}
