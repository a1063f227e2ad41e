package main

import (
	"bytes"
	"encoding/json"
	"image"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/sd"
)

func TestCoverage(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	iv := func(a, b float64) interval { return interval{at(a), at(b)} }
	tests := []struct {
		name     string
		ivs      []interval
		from, to float64
		want     []float64 // seconds with ≥1, ≥2, ... active
	}{
		{"none", nil, 0, 10, nil},
		{"one", []interval{iv(1, 3)}, 0, 10, []float64{2}},
		{"disjoint", []interval{iv(1, 3), iv(4, 5)}, 0, 10, []float64{3}},
		{"overlap", []interval{iv(0, 4), iv(2, 6)}, 0, 10, []float64{6, 2}},
		{"nested three", []interval{iv(0, 10), iv(1, 9), iv(2, 3)}, 0, 10, []float64{10, 8, 1}},
		{"touching", []interval{iv(0, 2), iv(2, 4)}, 0, 10, []float64{4}},
		{"clipped", []interval{iv(-5, 2), iv(8, 20)}, 0, 10, []float64{4}},
	}
	for _, tt := range tests {
		got := coverage(tt.ivs, at(tt.from), at(tt.to))
		if len(got) != len(tt.want) {
			t.Errorf("%s: coverage %v, want %v s", tt.name, got, tt.want)
			continue
		}
		for k := range got {
			if math.Abs(got[k].Seconds()-tt.want[k]) > 1e-9 {
				t.Errorf("%s: ≥%d active for %v, want %vs", tt.name, k+1, got[k], tt.want[k])
			}
		}
	}
}

func TestQuantile(t *testing.T) {
	tests := []struct {
		v    []float64
		q    float64
		want float64
	}{
		{[]float64{3, 1, 2}, 0.5, 2},
		{[]float64{1, 2, 3, 4}, 0.5, 2.5},
		{[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 0.95, 10.5},
		{[]float64{7}, 0.95, 7},
	}
	for _, tt := range tests {
		if got := quantile(tt.v, tt.q); math.Abs(got-tt.want) > 1e-12 {
			t.Errorf("quantile(%v, %v) = %v, want %v", tt.v, tt.q, got, tt.want)
		}
	}
}

func tinyModel(t *testing.T) string {
	t.Helper()
	testenv.RequireORT(t)
	dir := filepath.Join(t.TempDir(), "tiny")
	if err := EnsureModel(dir, modelgen.Tiny(), modelgen.Options{}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestSequentialMatchesEngine checks that the baseline loop does the same
// work as the engine: the same request gives the same image.
func TestSequentialMatchesEngine(t *testing.T) {
	dir := tinyModel(t)
	f, err := sd.OpenFolder(t.Context(), dir, sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	m, err := pipeline.New(f.Components(), pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	s := &sequential{f: f, enc: f.TextEncoder, den: f.UNet, dec: f.VAEDecoder}
	cfg := Config{Width: 64, Height: 64, Steps: 4}
	if err := cfg.defaults(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		req := cfg.request(i)
		got, tm, err := s.generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		res, err := m.Generate(t.Context(), req)
		if err != nil {
			t.Fatal(err)
		}
		want := res.Images[0].(*image.NRGBA)
		if !bytes.Equal(got.Pix, want.Pix) {
			var diff int
			for k := range got.Pix {
				diff = max(diff, int(got.Pix[k])-int(want.Pix[k]), int(want.Pix[k])-int(got.Pix[k]))
			}
			t.Errorf("request %d: sequential image differs from the engine's by up to %d levels", i, diff)
		}
		if !(tm.encStart.Before(tm.encEnd) && !tm.denStart.Before(tm.encEnd) && tm.denStart.Before(tm.denEnd) && tm.decStart.Before(tm.decEnd)) {
			t.Errorf("request %d: spans out of order: %+v", i, tm)
		}
	}
}

// TestRunTiny runs the whole harness on the tiny model with a few requests.
func TestRunTiny(t *testing.T) {
	dir := tinyModel(t)
	cfg := Config{
		ModelDir: dir, Arch: modelgen.Tiny(), Requests: 3, Concurrency: 2,
		Width: 64, Height: 64, Steps: 2, Rounds: 2, LatencyRepeats: 1, MatMulN: 64, MatMulRuns: 2,
	}
	rep, err := Run(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rep.Runs), 2*len(AllModes); got != want {
		t.Fatalf("%d runs, want %d", got, want)
	}
	if rep.Runs[0].Mode != AllModes[0] || rep.Runs[len(AllModes)].Mode != AllModes[len(AllModes)-1] {
		t.Errorf("round 2 did not reverse the order: %s first", rep.Runs[len(AllModes)].Mode)
	}
	for _, run := range rep.Runs {
		if len(run.Timings) != cfg.Requests || !(run.Wall > 0) || !(run.ImagesPerMin > 0) {
			t.Fatalf("%s: %d timings, wall %v, %v images/min", run.Mode, len(run.Timings), run.Wall, run.ImagesPerMin)
		}
		const eps = 1e-6
		for _, tm := range run.Timings {
			seq := []float64{0, tm.Submit, tm.EncodeStart, tm.EncodeEnd, tm.DenoiseStart, tm.DenoiseEnd, tm.DecodeStart, tm.DecodeEnd}
			for k := 1; k < len(seq); k++ {
				if seq[k] < seq[k-1]-eps {
					t.Errorf("%s request %d: timeline not increasing: %v", run.Mode, tm.Index, seq[1:])
					break
				}
			}
			if tm.DecodeEnd > run.Wall+eps || tm.Latency > run.Wall+eps {
				t.Errorf("%s request %d ends at %v after the run's %v s", run.Mode, tm.Index, tm.DecodeEnd, run.Wall)
			}
		}
		if run.Mode == Sequential && run.Overlap != 0 {
			t.Errorf("sequential: stages overlap %v of the time", run.Overlap)
		}
		if run.Mode == Batched && run.Timings[0].Batch < 1 {
			t.Errorf("batched: batch size %d", run.Timings[0].Batch)
		}
		var calls int64
		for _, s := range run.Sessions {
			calls += s.Calls
		}
		// per request: one text encoder call, UNetCalls UNet calls (shared
		// when batched), one VAE decoder call
		if min, max := int64(cfg.Requests*2+rep.UNetCalls), int64(cfg.Requests*(2+rep.UNetCalls)); calls < min || calls > max {
			t.Errorf("%s: %d session calls, want %d to %d", run.Mode, calls, min, max)
		}
		if run.OutsideORT < 0 || run.OutsideORT > 1 {
			t.Errorf("%s: outside ORT %v", run.Mode, run.OutsideORT)
		}
	}
	if len(rep.Modes) != len(AllModes) || rep.Modes[0].Speedup != 1 {
		t.Errorf("modes %+v: want %d, sequential speed-up 1", rep.Modes, len(AllModes))
	}
	if rep.Latency == nil || len(rep.Latency.Engine) != 1 || len(rep.Latency.Sequential) != 1 {
		t.Errorf("latency pairs: %+v", rep.Latency)
	}
	if len(rep.MatMul) == 0 || !(rep.MatMul[0].GFLOPS > 0) {
		t.Errorf("matmul: %+v", rep.MatMul)
	}
	if len(rep.Targets) != 6 {
		t.Errorf("%d targets, want 6", len(rep.Targets))
	}

	var js, md, svg bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Runs) != len(rep.Runs) {
		t.Errorf("JSON does not read back: %v (%d runs)", err, len(back.Runs))
	}
	if err := rep.WriteMarkdown(&md); err != nil {
		t.Fatal(err)
	}
	for _, m := range AllModes {
		if !strings.Contains(md.String(), "| "+string(m)+" |") {
			t.Errorf("markdown lacks a row for %s:\n%s", m, md.String())
		}
	}
	if err := rep.WriteTimelineSVG(&svg, 2); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(svg.String(), ">request "); n != len(AllModes)*cfg.Requests {
		t.Errorf("timeline has %d request rows, want %d", n, len(AllModes)*cfg.Requests)
	}
}

func TestConfigErrors(t *testing.T) {
	tests := []Config{
		{Width: 100},
		{Guidance: 1},
		{Requests: -1},
		{Modes: []Mode{"warp"}},
		// a UNet off the CPU with the modes that split the CPU's cores
		{Devices: map[sd.Component]sd.Device{sd.UNet: sd.WebGPU}, Modes: []Mode{Pipelined}, NoScaling: true},
		{Devices: map[sd.Component]sd.Device{sd.UNet: sd.WebGPU}, Modes: []Mode{Sequential}},
	}
	for _, c := range tests {
		if err := c.defaults(); err == nil {
			t.Errorf("%+v: no error", c)
		}
	}
	ok := Config{Devices: map[sd.Component]sd.Device{sd.UNet: sd.WebGPU}, Modes: []Mode{Sequential, PipelinedFull}, NoScaling: true}
	if err := ok.defaults(); err != nil {
		t.Errorf("UNet on WebGPU, sequential and pipelined-full without scaling: %v", err)
	}
}

func TestParseDevices(t *testing.T) {
	got, err := ParseDevices("unet=webgpu, vae_decoder=cuda")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[sd.Component]sd.Device{sd.UNet: sd.WebGPU, sd.VAEDecoder: sd.CUDA}; !maps.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got, err := ParseDevices(" "); got != nil || err != nil {
		t.Errorf("empty list: %v, %v; want nil, nil", got, err)
	}
	for _, bad := range []string{"unet", "vae=webgpu", "unet=", "=webgpu"} {
		if _, err := ParseDevices(bad); err == nil || !strings.Contains(err.Error(), "vae_decoder") {
			t.Errorf("%q: %v, want an error listing the components", bad, err)
		}
	}
}

func TestCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	for _, args := range [][]string{
		{"-modes", "sequential,warp"},
		{"-attention", "sparse"},
		{"-arch", "no-such-arch"}, // modelgen knows sdxl now
	} {
		if err := run(t.Context(), args, &stdout, &stderr); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	dir := tinyModel(t)
	out := t.TempDir()
	args := []string{"-model", dir, "-arch", "tiny", "-n", "2", "-steps", "1", "-size", "64", "-single", "0",
		"-matmul", "64", "-modes", "sequential,batched", "-out", out, "-q"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"report.json", "report.md", "timeline.svg"} {
		if _, err := os.Stat(filepath.Join(out, name)); err != nil {
			t.Error(err)
		}
	}
	if !strings.Contains(stdout.String(), "| batched |") {
		t.Errorf("stdout lacks the batched row:\n%s", stdout.String())
	}
}

// TestCommandSDXL runs the bench's engine modes on a generated tiny SDXL
// (two text encoders, added conditioning through the call recorder) and
// checks that the SD 1.x-only measurements are refused by name, not run
// into a UNet input error.
func TestCommandSDXL(t *testing.T) {
	testenv.RequireORT(t)
	dir := filepath.Join(t.TempDir(), "tiny-sdxl")
	if err := EnsureModel(dir, modelgen.TinySDXL(), modelgen.Options{}); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	base := []string{"-model", dir, "-arch", "tiny-sdxl", "-n", "2", "-steps", "1", "-size", "64", "-matmul", "64", "-q"}
	err := run(t.Context(), append(slices.Clone(base), "-out", t.TempDir(), "-modes", "sequential,batched"), &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "two text encoders") || !strings.Contains(err.Error(), "-modes sequential") {
		t.Fatalf("sequential mode on SDXL: %v, want an error naming it", err)
	}
	out := t.TempDir()
	args := append(slices.Clone(base), "-out", out, "-modes", "pipelined-full,batched", "-single", "0", "-scaling=false")
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(out, "report.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep Report
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 2 || rep.UNetMACs <= 0 {
		t.Errorf("report: %d runs, UNet %.3g MACs a call; want 2 runs and a count", len(rep.Runs), rep.UNetMACs)
	}
	for _, r := range rep.Runs {
		if r.Requests != 2 || r.Sessions["unet"].Calls < 1 || r.Sessions["text_encoder"].Calls < 1 {
			t.Errorf("%s: %d requests, sessions %v; want 2 requests through the text encoders and the UNet", r.Mode, r.Requests, r.Sessions)
		}
	}
}
