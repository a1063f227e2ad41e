package vae_test

import (
	"cmp"
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

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/vae"
)

// TestTiledMeasured decodes the same latents of a large image untiled and
// in tiles, each in a fresh child process, and prints each decode's time,
// the peak RSS it added, and the tiled images' difference to the untiled
// one inside the tiles and on the seams (#22: tiled vs untiled, reported).
// It is a measurement, so it runs only when asked:
//
//	SDPIPE_TILED_MEASURE=DIR [SDPIPE_TILED_SIZE=1024] [SDPIPE_TILED_TILES=512,256] \
//	  go test -run TestTiledMeasured -v -timeout 60m ./vae
//
// DIR is a model folder (vae_decoder/model.onnx); the latents are N(0, 1)
// from a fixed seed, which for a random-weight decoder is as good as any.
// The decoder runs without ONNX Runtime's memory arena, as sd runs it.
func TestTiledMeasured(t *testing.T) {
	dir := os.Getenv("SDPIPE_TILED_MEASURE")
	if dir == "" {
		t.Skip("a measurement: set SDPIPE_TILED_MEASURE to a model folder to run it")
	}
	testenv.RequireORT(t)
	size, err := strconv.Atoi(cmp.Or(os.Getenv("SDPIPE_TILED_SIZE"), "1024"))
	if err != nil || size%vae.Factor != 0 {
		t.Fatalf("SDPIPE_TILED_SIZE %q: want a multiple of %d", os.Getenv("SDPIPE_TILED_SIZE"), vae.Factor)
	}
	if spec := os.Getenv("sdpipe_tiled_child"); spec != "" {
		tiledChild(t, dir, size, spec)
		return
	}
	out := t.TempDir()
	run := func(tile int) ([]float32, string) {
		file := filepath.Join(out, fmt.Sprintf("tile-%d.f32", tile))
		cmd := exec.Command(os.Args[0], "-test.run=^TestTiledMeasured$", "-test.v", "-test.timeout=50m")
		cmd.Env = append(os.Environ(), fmt.Sprintf("sdpipe_tiled_child=%d:%s", tile, file))
		b, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("tile %d: %v\n%s", tile, err, b)
		}
		var line string
		for _, l := range strings.Split(string(b), "\n") {
			if s, ok := strings.CutPrefix(l, "MEASURE "); ok {
				line = s
			}
		}
		raw, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		px := make([]float32, len(raw)/4)
		for i := range px {
			px[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		return px, line
	}
	plain, line := run(0)
	t.Logf("%d² untiled: %s", size, line)
	for _, s := range strings.Split(cmp.Or(os.Getenv("SDPIPE_TILED_TILES"), "512,256"), ",") {
		tile, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		tiled, line := run(tile)
		if len(tiled) != len(plain) {
			t.Fatalf("tile %d: %d values, untiled %d", tile, len(tiled), len(plain))
		}
		im, imean, sm, smean := seamDiff(tiled, plain, 3, size, size, tile*3/4, tile/4)
		t.Logf("%d² in %d-pixel tiles: %s; vs untiled: interior max %.3g mean %.3g, seams max %.3g mean %.3g (pixels in [-1, 1])",
			size, tile, line, im, imean, sm, smean)
	}
}

// tiledChild decodes once ("TILE:FILE", tile 0 untiled), writes the pixels
// to FILE as little-endian float32 and prints a MEASURE line.
func tiledChild(t *testing.T, dir string, size int, spec string) {
	tileS, file, _ := strings.Cut(spec, ":")
	tile, err := strconv.Atoi(tileS)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := vae.OpenDecoder(t.Context(), filepath.Join(dir, "vae_decoder", "model.onnx"), session.Options{DisableMemoryArena: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	h := size / vae.Factor
	r := rand.New(rand.NewPCG(7, 8))
	d := make([]float32, dec.LatentChannels()*h*h)
	for i := range d {
		d[i] = float32(r.NormFloat64())
	}
	lat := tensor.New(tensor.WithShape(1, dec.LatentChannels(), h, h), tensor.WithBacking(d))
	testenv.ResetPeakRSS(t)
	before := testenv.RSS(t, "VmRSS")
	t0 := time.Now()
	var px *tensor.Dense
	if tile == 0 {
		px, err = dec.Decode(t.Context(), lat)
	} else {
		px, err = dec.DecodeTiled(t.Context(), lat, tile)
	}
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	added := testenv.RSS(t, "VmHWM") - before
	v := px.Data().([]float32)
	raw := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(x))
	}
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	fmt.Printf("MEASURE %.1f s, peak +%d MiB\n", took.Seconds(), added>>20)
}
