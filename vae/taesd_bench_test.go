//go:build integration

package vae_test

import (
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/vae"
)

// TestTAESDDecodeTime times TAESD's decoder (the released architecture,
// random weights: the time does not depend on them) against the VAE
// decoder of the SD 1.5-architecture folder $SD_MODEL_DIR at 512×512, one
// image per call, interleaved in one process after one warm-up call each:
//
//	SD_MODEL_DIR=/root/models/sd15 flock /work/coord/heavy.lock go test -tags integration -run TestTAESDDecodeTime -v -timeout 30m ./vae
func TestTAESDDecodeTime(t *testing.T) {
	dir := testenv.Measure(t, "SD_MODEL_DIR", "an SD 1.5-architecture ONNX folder")
	ctx := t.Context()
	o := session.Options{DisableMemoryArena: true, DisableMemoryPattern: true} // as sd opens the VAE
	full, err := vae.OpenDecoder(ctx, filepath.Join(dir, "vae_decoder", "model.onnx"), o)
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	td := t.TempDir()
	if err := modelgen.WriteTAESD(td, modelgen.FullTAESD(), modelgen.Options{Seed: 1}); err != nil {
		t.Fatal(err)
	}
	tiny, err := vae.OpenTAESDDecoder(ctx, filepath.Join(td, "vae_decoder", "model.onnx"), vae.Signed, o)
	if err != nil {
		t.Fatal(err)
	}
	defer tiny.Close()
	r := rand.New(rand.NewPCG(1, 2))
	lat := make([]float32, 4*64*64)
	for i := range lat {
		lat[i] = float32(r.NormFloat64())
	}
	in := func() *tensor.Dense {
		return tensor.New(tensor.WithShape(1, 4, 64, 64), tensor.WithBacking(slices.Clone(lat)))
	}
	times := map[string][]time.Duration{}
	run := func(name string, f func() error) {
		t0 := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		times[name] = append(times[name], time.Since(t0))
	}
	vaeCall := func() error { _, err := full.Decode(ctx, in()); return err }
	taesdCall := func() error { _, err := tiny.Decode(ctx, in()); return err }
	run("warm-up vae", vaeCall)
	run("warm-up taesd", taesdCall)
	for i := range 5 {
		if i%2 == 0 {
			run("vae", vaeCall)
			run("taesd", taesdCall)
		} else {
			run("taesd", taesdCall)
			run("vae", vaeCall)
		}
	}
	med := func(d []time.Duration) time.Duration { s := slices.Clone(d); slices.Sort(s); return s[len(s)/2] }
	for _, n := range []string{"vae", "taesd"} {
		t.Logf("%s decode 512×512: median %v of %v", n, med(times[n]), times[n])
	}
	t.Logf("TAESD/VAE: %.1f× faster (medians)", float64(med(times["vae"]))/float64(med(times["taesd"])))
}
