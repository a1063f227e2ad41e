package sd

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/vae"
)

// TestTiledDecodeMeasured measures the peak RSS of one VAE decode, plain
// and tiled, on the model folder $SDPIPE_MEASURE_TILED (an SD 1.5 folder,
// e.g. one cmd/sdgen generated) at $SDPIPE_MEASURE_SIZE pixels (default
// 1024) in tiles of $SDPIPE_MEASURE_TILE (default 512), each in a process of its own so that neither inherits the other's
// arena; the decoder is opened as Open opens it (rewrites, no memory
// pattern). It logs each decode's peak over the RSS after loading, beside
// admission's estimate of the decode, and the tiled image's difference
// from the plain one inside the tiles and on the seams. It is slow (a
// 1024² SD 1.5 decode is minutes on two cores) and runs only when the
// variable is set:
//
//	SDPIPE_MEASURE_TILED=/root/models/sd15 go test -run TestTiledDecodeMeasured -v -timeout 60m ./sd
//
// Measured on the generated SD 1.5 model (cmd/sdgen, random weights), at
// 1024² from N(0,1) latents, on 2 cores: the plain decode peaked at
// 4.6 GiB RSS, 4.0 GiB over the loaded model, where admission estimates
// 3.0 GiB (192 s); in 512-pixel tiles (3×3) at 1.5 GiB, 1.1 GiB over the
// loaded model, where admission estimates 768 MiB (263 s). The tiled
// image differed from the plain one by at most 0.198 (mean 0.0147) inside
// the tiles and 0.201 (mean 0.0158) on the seams, pixels in [-1, 1].
func TestTiledDecodeMeasured(t *testing.T) {
	if mode := os.Getenv("SDPIPE_TILED_CHILD"); mode != "" {
		tiledDecodeChild(t, mode)
		return
	}
	dir := testenv.Measure(t, "SDPIPE_MEASURE_TILED", "an SD 1.5 model folder to measure tiled decoding")
	size := testenv.EnvInt(t, "SDPIPE_MEASURE_SIZE", 1024, 8)
	tile := testenv.EnvInt(t, "SDPIPE_MEASURE_TILE", 512, 8)
	out := map[string][]float32{}
	peak := map[string]float64{}
	for _, mode := range []string{"plain", "tiled"} {
		file := filepath.Join(t.TempDir(), mode)
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestTiledDecodeMeasured$", "-test.v", "-test.timeout=0")
		cmd.Env = append(os.Environ(), "SDPIPE_TILED_CHILD="+mode, "SDPIPE_TILED_DIR="+dir,
			"SDPIPE_TILED_SIZE="+strconv.Itoa(size), "SDPIPE_TILED_TILE="+strconv.Itoa(tile), "SDPIPE_TILED_OUT="+file)
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, b)
		}
		var open, hwm, est, secs float64
		var line string
		for _, l := range strings.Split(string(b), "\n") {
			if n, _ := fmt.Sscanf(l, "tiled-measure: open %g hwm %g estimate %g seconds %g", &open, &hwm, &est, &secs); n == 4 {
				line = l
			}
		}
		if line == "" {
			t.Fatalf("%s: no figures in\n%s", mode, b)
		}
		peak[mode] = hwm - open
		t.Logf("%s decode %d² (tile %d): peak RSS %s, %s over the %s after loading; admission's estimate of the decode %s; %.0f s",
			mode, size, tile, gib(int64(hwm)), gib(int64(hwm-open)), gib(int64(open)), gib(int64(est)), secs)
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		v := make([]float32, len(raw)/4)
		for i := range v {
			v[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		out[mode] = v
	}
	lt := tile / vae.Factor
	im, imean, sm, smean := testenv.SeamDiff(out["tiled"], out["plain"], 3, size, size, vae.Factor*(lt-lt/4), vae.Factor*(lt/4))
	t.Logf("tiled vs plain %d² in %d-pixel tiles: interior max %.3g mean %.3g, seams max %.3g mean %.3g", size, tile, im, imean, sm, smean)
	if peak["tiled"] >= peak["plain"] {
		t.Errorf("the tiled decode peaked %.2f GiB over the loaded model, the plain one %.2f GiB", peak["tiled"]/(1<<30), peak["plain"]/(1<<30))
	}
}

// tiledDecodeChild is one measured decode.
func tiledDecodeChild(t *testing.T, mode string) {
	dir := os.Getenv("SDPIPE_TILED_DIR")
	size, _ := strconv.Atoi(os.Getenv("SDPIPE_TILED_SIZE"))
	tile, _ := strconv.Atoi(os.Getenv("SDPIPE_TILED_TILE"))
	cfg := defaultLoadConfig()
	cfg.check()
	d, err := vae.OpenDecoder(t.Context(), filepath.Join(dir, "vae_decoder", "model.onnx"), cfg.sessionOptions(VAEDecoder))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	st, err := onnxpb.ReadStructure(d.Loaded.File)
	if err != nil {
		t.Fatal(err)
	}
	lh := int64(size / vae.Factor)
	c := callShape{rows: 1, h: lh, w: lh, visual: true}
	if mode == "tiled" {
		c.h, c.w = min(lh, int64(tile/vae.Factor)), min(lh, int64(tile/vae.Factor))
	}
	est := analyze(st).need(c)
	r := rand.New(rand.NewPCG(1, 2))
	lat := make([]float32, d.LatentChannels()*size*size/64)
	for i := range lat {
		lat[i] = float32(r.NormFloat64())
	}
	x := tensor.New(tensor.WithShape(1, d.LatentChannels(), size/vae.Factor, size/vae.Factor), tensor.WithBacking(lat))
	open := testenv.ProcStatus(t, "VmRSS")
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil { // reset VmHWM
		t.Fatal(err)
	}
	start := testenv.ProcStatus(t, "VmHWM")
	t0 := time.Now()
	var img *tensor.Dense
	if mode == "tiled" {
		img, err = d.DecodeTiled(t.Context(), x, tile)
	} else {
		img, err = d.Decode(t.Context(), x)
	}
	if err != nil {
		t.Fatal(err)
	}
	secs := time.Since(t0).Seconds()
	hwm := max(testenv.ProcStatus(t, "VmHWM"), start)
	raw := make([]byte, 4*img.Size())
	for i, v := range img.Data().([]float32) {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	if err := os.WriteFile(os.Getenv("SDPIPE_TILED_OUT"), raw, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("tiled-measure: open %g hwm %g estimate %g seconds %g\n", open, hwm, float64(est), secs)
}

// TestTiledGenerateMeasured measures the peak RSS of a whole one-step
// generation at $SDPIPE_MEASURE_SIZE (default 1024) on the model folder
// $SDPIPE_MEASURE_TILED, with the VAE plain and tiled (WithTiledVAE, the
// model's tile), each in a process of its own, beside admission's
// estimate: whether a 1024² SD 1.5 image fits a budget with tiling. Like
// TestTiledDecodeMeasured it runs only when the variable is set:
//
//	SDPIPE_MEASURE_TILED=/root/models/sd15 go test -run TestTiledGenerateMeasured -v -timeout 60m ./sd
//
// Measured on the generated SD 1.5 model, 1024², one step with guidance,
// on 2 cores: plain, the process peaked at 9.3 GiB RSS (4.1 GiB after
// loading; admission's estimate 4.0 GiB, 283 s); with the VAE in 512-pixel
// tiles at 6.5 GiB (4.4 GiB after loading; estimate 1.7 GiB, 449 s).
func TestTiledGenerateMeasured(t *testing.T) {
	if mode := os.Getenv("SDPIPE_TILED_GEN"); mode != "" {
		tiledGenerateChild(t, mode)
		return
	}
	dir := testenv.Measure(t, "SDPIPE_MEASURE_TILED", "an SD 1.5 model folder to measure tiled generation")
	size := testenv.EnvInt(t, "SDPIPE_MEASURE_SIZE", 1024, 8)
	for _, mode := range []string{"plain", "tiled"} {
		cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestTiledGenerateMeasured$", "-test.v", "-test.timeout=0")
		cmd.Env = append(os.Environ(), "SDPIPE_TILED_GEN="+mode, "SDPIPE_TILED_DIR="+dir, "SDPIPE_TILED_SIZE="+strconv.Itoa(size))
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", mode, err, b)
		}
		var open, hwm, est, secs float64
		var tile int
		found := false
		for _, l := range strings.Split(string(b), "\n") {
			if n, _ := fmt.Sscanf(l, "tiled-generate: open %g hwm %g estimate %g tile %d seconds %g", &open, &hwm, &est, &tile, &secs); n == 5 {
				found = true
			}
		}
		if !found {
			t.Fatalf("%s: no figures in\n%s", mode, b)
		}
		t.Logf("%s: a one-step %d² image (VAE tile %d) peaked at %s RSS, %s after loading; admission's estimate %s; %.0f s",
			mode, size, tile, gib(int64(hwm)), gib(int64(open)), gib(int64(est)), secs)
	}
}

// tiledGenerateChild is one measured generation.
func tiledGenerateChild(t *testing.T, mode string) {
	when := Off
	if mode == "tiled" {
		when = On
	}
	size := testenv.EnvInt(t, "SDPIPE_TILED_SIZE", 1024, 8)
	m, err := Open(t.Context(), os.Getenv("SDPIPE_TILED_DIR"), WithMemoryBudget(math.MaxInt64), WithTiledVAE(when, 0), WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	req := Request{Prompt: "a lighthouse at dusk", Steps: 1, Seed: 1, Width: size, Height: size}
	e, err := m.EstimateMemory(req)
	if err != nil {
		t.Fatal(err)
	}
	open := testenv.ProcStatus(t, "VmRSS")
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil { // reset VmHWM: the generation's peak, not the load's
		t.Fatal(err)
	}
	t0 := time.Now()
	if _, err := m.Generate(t.Context(), req); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("tiled-generate: open %g hwm %g estimate %g tile %d seconds %g\n", open, testenv.ProcStatus(t, "VmHWM"), float64(e.Total()), e.VAETile, time.Since(t0).Seconds())
}
