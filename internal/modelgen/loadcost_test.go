package modelgen

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// streamSource records the parameters a build asks for and assigns them
// offsets in a flat checkpoint-like file (after an odd-sized header, so
// offsets are unaligned as in safetensors), returning external references;
// write then fills the file one tensor at a time.
type streamSource struct {
	typ   onnxpb.DataType
	loc   string
	size  int64
	names []string
	reqs  map[string]streamReq
}

type streamReq struct {
	shape  []int64
	init   Init
	offset int64
}

func (s *streamSource) Param(c Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error) {
	if s.reqs == nil {
		s.reqs, s.size = map[string]streamReq{}, 1001
	}
	n := int64(s.typ.Size())
	for _, d := range shape {
		n *= d
	}
	s.reqs[name] = streamReq{shape, init, s.size}
	s.names = append(s.names, name)
	t, err := onnxpb.ExternalRef(name, s.typ, shape, s.loc, s.size, n)
	s.size += n
	return t, err
}

func (s *streamSource) write(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := bufio.NewWriterSize(f, 1<<20)
	if _, err := w.Write(make([]byte, 1001)); err != nil {
		t.Fatal(err)
	}
	rs := RandomSource{Type: s.typ}
	for _, name := range s.names {
		r := s.reqs[name]
		tn, err := rs.Param("", name, r.shape, r.init)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, tn.NumElements()*int64(s.typ.Size()))
		tn.Fill(b)
		if _, err := w.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestLoadCost measures what ONNX Runtime spends opening the SD 1.5 UNet
// (3.4 GB of float32 weights) in three forms, each in a fresh process:
// the generated folder (weights pre-transposed in weights.pb, MatMul on
// them), and graphs referencing a flat checkpoint-like file in place, its
// Linear weights in PyTorch layout [out, in] transposed in the graph
// (float32), or also cast from float16. It reports session-creation time
// and the process's peak RSS. Opt-in (heavy: several GB of disk and RAM):
// SDGEN_LOADCOST=1, under flock /work/coord/heavy.lock.
func TestLoadCost(t *testing.T) {
	if os.Getenv("SDGEN_LOADCOST") == "" {
		t.Skip("set SDGEN_LOADCOST=1 (writes ~5 GB, opens the SD 1.5 UNet three times) to measure load cost")
	}
	testenv.RequireORT(t)
	cfg := SD15()
	root := t.TempDir()
	inline := filepath.Join(root, "inline")
	if err := os.MkdirAll(filepath.Join(inline, UNetDir), 0o755); err != nil {
		t.Fatal(err)
	}
	un, err := BuildUNet(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeModel(inline, UNetDir, un, &onnxpb.ExternalData{File: onnxpb.LegacyExternalFile, Threshold: 1024}); err != nil {
		t.Fatal(err)
	}
	type form struct {
		name, model, ext string
	}
	forms := []form{{"generated folder (MatMul on pre-transposed weights.pb)", filepath.Join(inline, UNetDir, ModelFile), ""}}
	for _, typ := range []onnxpb.DataType{onnxpb.Float, onnxpb.Float16} {
		dir := filepath.Join(root, typ.String())
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		src := &streamSource{typ: typ, loc: "ckpt.bin"}
		m, err := BuildUNet(cfg, Options{Source: src})
		if err != nil {
			t.Fatal(err)
		}
		src.write(t, filepath.Join(dir, "ckpt.bin"))
		if err := onnxpb.WriteFile(filepath.Join(dir, ModelFile), m, nil); err != nil {
			t.Fatal(err)
		}
		forms = append(forms, form{fmt.Sprintf("checkpoint in place, %s, Transpose%s in the graph", typ, map[bool]string{true: "+Cast", false: ""}[typ != onnxpb.Float]), filepath.Join(dir, ModelFile), dir})
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 2; round++ {
		for _, f := range forms {
			cmd := exec.Command(exe, "-test.run=^TestLoadCostChild$", "-test.v")
			cmd.Env = append(os.Environ(), "SDGEN_LOADCOST_MODEL="+f.model)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", f.name, err, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if i := strings.Index(l, "LOADCOST "); i >= 0 {
					t.Logf("round %d, %s: %s", round+1, f.name, l[i+len("LOADCOST "):])
				}
			}
		}
	}
}

// TestLoadCostChild opens one model for TestLoadCost and prints the time
// and the peak RSS.
func TestLoadCostChild(t *testing.T) {
	path := os.Getenv("SDGEN_LOADCOST_MODEL")
	if path == "" {
		t.Skip("run by TestLoadCost")
	}
	before := testenv.ProcStatus(t, "VmHWM")
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{IntraOpThreads: 2})
	if err != nil {
		t.Fatal(err)
	}
	open := time.Since(start)
	hwm := testenv.ProcStatus(t, "VmHWM")
	rss := testenv.ProcStatus(t, "VmRSS")
	// Two UNet calls at 32×32 latents: a Transpose or Cast ONNX Runtime did
	// not fold would show here.
	in := []ort.Tensor{
		{Shape: []int64{1, 4, 32, 32}, Data: gauss(1, 4*32*32)},
		{Shape: []int64{1}, Data: []float32{501}},
		{Shape: []int64{1, 77, 768}, Data: gauss(2, 77*768)},
	}
	var best time.Duration
	for range 3 {
		t0 := time.Now()
		if err := s.Run(t.Context(), in, []ort.Tensor{{Shape: []int64{1, 4, 32, 32}}}); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(t0); best == 0 || d < best {
			best = d
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("LOADCOST open %.1f s, peak RSS %.2f GiB (%.2f GiB before), RSS after open %.2f GiB, UNet call (32×32 latents) best of 3 %.0f ms\n", open.Seconds(), hwm/(1<<30), before/(1<<30), rss/(1<<30), best.Seconds()*1000)
}
