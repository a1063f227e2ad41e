package sd

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/models"
)

// TestMemoryEstimateMeasured measures the peak memory of each component's
// call and of a whole request, and prints them beside the estimates that
// admission uses (#16: estimate vs measured). It is a measurement, not a
// check, so it runs only when asked:
//
//	SDPIPE_MEMORY_MEASURE=default|DIR [SDPIPE_MEMORY_SIZES=256,512,768] \
//	  [SDPIPE_MEMORY_KINDS=components,request] [SDPIPE_MEMORY_VAE_ARENA=off] \
//	  [SDPIPE_MEMORY_BUDGET_GIB=8] \
//	  go test -run TestMemoryEstimateMeasured -v -timeout 30m ./sd
//
// Every figure comes from a fresh child process (one per size and kind),
// because ONNX Runtime's arenas keep their peak: the child resets its
// peak RSS (/proc/self/clear_refs) before the call and reports VmHWM minus
// the RSS before it. "components" runs the text encoder, the UNet and the
// VAE decoder once each at the request's shape (a guided request: two
// rows); "request" runs a whole 2-step guided request through the engine.
// With SDPIPE_MEMORY_BUDGET_GIB the model is opened with that memory
// budget, so admission tiles the VAE where the plain decode would not fit
// (the request's line says which tile), and the request's child also
// reports the whole process's peak RSS (weights included) against it.
func TestMemoryEstimateMeasured(t *testing.T) {
	which := testenv.Measure(t, "SDPIPE_MEMORY_MEASURE", "default or a model folder to measure the memory estimates")
	if size := os.Getenv("sdpipe_memory_child"); size != "" {
		memoryChild(t, which, size)
		return
	}
	if _, err := os.Stat("/proc/self/clear_refs"); err != nil {
		t.Skip("needs Linux's /proc/self/clear_refs to reset the peak RSS")
	}
	sizes := strings.Split(cmp.Or(os.Getenv("SDPIPE_MEMORY_SIZES"), "256,512,768"), ",")
	t.Logf("model %s", which)
	t.Logf("%-5s %-12s %10s %10s %6s", "size", "part", "estimate", "measured", "ratio")
	for _, size := range sizes {
		for _, kind := range strings.Split(cmp.Or(os.Getenv("SDPIPE_MEMORY_KINDS"), "components,request"), ",") {
			cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryEstimateMeasured$", "-test.v", "-test.timeout=20m")
			cmd.Env = append(os.Environ(), "sdpipe_memory_child="+size+":"+kind)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", size, kind, err, out)
			}
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) > 1 && f[0] == "NOTE" {
					t.Logf("%-5s %s", size, strings.Join(f[1:], " "))
				}
				if len(f) == 4 && f[0] == "MEASURE" {
					est, _ := strconv.ParseInt(f[2], 10, 64)
					got, _ := strconv.ParseInt(f[3], 10, 64)
					t.Logf("%-5s %-12s %10s %10s %6.2f", size, f[1], mib(est), mib(got), float64(est)/float64(max(got, 1)))
				}
			}
		}
	}
}

func mib(n int64) string { return fmt.Sprintf("%.0fMiB", float64(n)/(1<<20)) }

// memoryChild is one measurement: spec is "SIZE:KIND".
func memoryChild(t *testing.T, which, spec string) {
	sizeS, kind, _ := strings.Cut(spec, ":")
	size, err := strconv.Atoi(sizeS)
	if err != nil {
		t.Fatal(err)
	}
	dir := which
	if which == "default" {
		if dir, err = models.DefaultDir(); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	budget := int64(1 << 60)
	if g := os.Getenv("SDPIPE_MEMORY_BUDGET_GIB"); g != "" {
		v, err := strconv.ParseFloat(g, 64)
		if err != nil {
			t.Fatalf("SDPIPE_MEMORY_BUDGET_GIB: %v", err)
		}
		budget = int64(v * (1 << 30))
	}
	opts := []Option{WithMemoryBudget(budget)}
	if os.Getenv("SDPIPE_MEMORY_VAE_ARENA") == "off" {
		opts = append(opts, WithSessionOptions(VAEDecoder, SessionOptions{MemoryArena: Off}))
	}
	m, err := Open(ctx, dir, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	est := m.mem.estimate(memShape{width: size, height: size, images: 1, guided: true, chunks: 1})
	report := func(part string, est int64, call func() error) {
		testenv.ResetPeakRSS(t)
		before := testenv.RSS(t, "VmRSS")
		if err := call(); err != nil {
			t.Fatalf("%s: %v", part, err)
		}
		fmt.Printf("MEASURE %s %d %d\n", part, est, testenv.RSS(t, "VmHWM")-before)
	}
	if kind == "request" {
		g := 7.5
		req := Request{Prompt: "a red circle", Width: size, Height: size, Steps: 2, GuidanceScale: &g, Seed: 1}
		if e, err := m.EstimateMemory(req); err == nil {
			fmt.Printf("NOTE request: estimate %s, VAE tile %d (0: untiled)\n", mib(e.Total()), e.VAETile)
		}
		report("request", est.Total(), func() error {
			_, err := m.Generate(ctx, req)
			return err
		})
		if budget < 1<<60 {
			fmt.Printf("MEASURE process-peak %d %d\n", budget, testenv.RSS(t, "VmHWM"))
		}
		return
	}
	f := m.f
	seq, lh, lw := int(m.mem.seq), size/8, size/8
	ch := int(m.mem.latentCh)
	var cond *tensor.Dense
	report("text-encoder", est.TextEncoder, func() error {
		row := f.Tokenizer.Encode("a red circle")
		ids := append(row[:seq:seq], row[:seq]...)
		cond, err = f.TextEncoder.Encode(ctx, ids, 2)
		return err
	})
	report("unet", est.UNet, func() error {
		sample := tensor.New(tensor.WithShape(2, ch, lh, lw), tensor.WithBacking(make([]float32, 2*ch*lh*lw)))
		_, err := f.UNet.Predict(ctx, sample, []float64{501, 501}, cond)
		return err
	})
	report("vae-decoder", est.VAEDecoder, func() error {
		lat := tensor.New(tensor.WithShape(1, ch, lh, lw), tensor.WithBacking(make([]float32, ch*lh*lw)))
		_, err := f.VAEDecoder.Decode(ctx, lat)
		return err
	})
}
