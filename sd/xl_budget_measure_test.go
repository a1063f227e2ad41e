package sd

import (
	"cmp"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/testenv"
)

// TestBudgetMeasured opens a model as a small-memory machine would and
// generates one image, printing the process's memory at each stage (#22:
// a 1024² SDXL image within 8 GiB). It is a measurement, not a check, so
// it runs only when asked, and should run in a process of its own:
//
//	SDPIPE_BUDGET_MEASURE=DIR [SDPIPE_BUDGET_SIZE=1024] [SDPIPE_BUDGET_STEPS=2] \
//	  [SDPIPE_BUDGET_CONTAINER_GIB=8] [SDPIPE_BUDGET_OPTIONS=int8,offload] \
//	  [SDPIPE_BUDGET_IMAGES=1] [SDPIPE_BUDGET_TILE=512] go test -run TestBudgetMeasured -v -timeout 60m ./sd
//
// The options are a comma-separated list: int8 (WithInt8 with its default
// calibration), int8matmul (Int8.MatMulOnly: no calibration), noencoder
// (WithoutVAEEncoder), offload (WithOffload of the text encoders), tiled
// (WithTiledVAE(On, SDPIPE_BUDGET_TILE), 0 by default: the model's native
// size, which for SDXL at 1024² is one tile, untiled; without it admission
// decides), unetnoarena (the UNet's session without ONNX Runtime's memory
// arena, so that admission counts its need as freed after each call). The
// memory budget is the one WithMemoryBudget's default gives in a cgroup
// of CONTAINER_GIB: 80 % of what is left once the model is loaded. The
// figures: the peak RSS of loading (VmHWM after Open: a cold int8 open
// calibrates in it), the RSS once loaded, the peak RSS of each stage of
// each request (sampled every 100 ms), and the whole process's VmHWM.
func TestBudgetMeasured(t *testing.T) {
	dir := testenv.Measure(t, "SDPIPE_BUDGET_MEASURE", "a model folder to measure the memory budget on it")
	atoi := func(name string, def int) int { return testenv.EnvInt(t, name, def, 1) }
	size, steps, images := atoi("SDPIPE_BUDGET_SIZE", 1024), atoi("SDPIPE_BUDGET_STEPS", 2), atoi("SDPIPE_BUDGET_IMAGES", 1)
	container, err := strconv.ParseFloat(cmp.Or(os.Getenv("SDPIPE_BUDGET_CONTAINER_GIB"), "8"), 64)
	if err != nil {
		t.Fatal(err)
	}
	var opts []Option
	if os.Getenv("SDPIPE_BUDGET_LOG") != "" {
		opts = append(opts, WithLogger(slog.New(slog.NewTextHandler(os.Stderr, nil))))
	}
	names := strings.Split(cmp.Or(os.Getenv("SDPIPE_BUDGET_OPTIONS"), "int8,offload"), ",")
	for _, o := range names {
		switch o {
		case "int8":
			opts = append(opts, WithInt8(Int8{}))
		case "int8matmul":
			opts = append(opts, WithInt8(Int8{MatMulOnly: true}))
		case "noencoder":
			opts = append(opts, WithoutVAEEncoder())
		case "offload":
			opts = append(opts, WithOffload(Offload{TextEncoders: true}))
		case "tiled":
			opts = append(opts, WithTiledVAE(On, atoi("SDPIPE_BUDGET_TILE", 0)))
		case "unetnoarena":
			opts = append(opts, WithSessionOptions(UNet, SessionOptions{MemoryArena: Off}))
		case "":
		default:
			t.Fatalf("SDPIPE_BUDGET_OPTIONS: unknown option %q", o)
		}
	}
	rss := func(name string) int64 { return testenv.RSS(t, name) }
	start := time.Now()
	m, err := Open(t.Context(), dir, append(opts, WithMemoryBudget(1<<60))...)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	loadPeak, loaded := rss("VmHWM"), rss("VmRSS")
	fmt.Printf("options %v, %d² %d steps, container %.1f GiB\n", names, size, steps, container)
	fmt.Printf("open: %.1f s, peak RSS %s, RSS once loaded %s\n", time.Since(start).Seconds(), mib(loadPeak), mib(loaded))
	budget := int64((container*(1<<30) - float64(loaded)) * 0.8)
	if budget <= 0 {
		t.Fatalf("the loaded model (%s) does not leave a budget in %.1f GiB", gib(loaded), container)
	}
	m.mem.budget, m.mem.gate.budget = budget, budget
	req := Request{Prompt: "a photo of an astronaut riding a horse on mars", Width: size, Height: size, Steps: steps, Seed: 1}
	e, err := m.EstimateMemory(req)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("budget %s: estimate %s (text %s + weights %s, unet %s, vae %s, buffers %s; sum of the parts %s), VAE tile %d\n",
		mib(budget), mib(e.Total()), mib(e.TextEncoder), mib(e.TextWeights), mib(e.UNet), mib(e.VAEDecoder), mib(e.Buffers),
		mib(e.TextEncoder+e.TextWeights+e.UNet+e.VAEDecoder+e.VAEEncoder+e.Buffers), e.VAETile)
	if err := m.Check(req); err != nil {
		t.Fatalf("refused on the budget of %.1f GiB: %v", container, err)
	}

	var phase atomic.Value
	peaks := map[string]int64{}
	var mu sync.Mutex
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			r := rss("VmRSS")
			mu.Lock()
			p, _ := phase.Load().(string)
			peaks[p] = max(peaks[p], r)
			mu.Unlock()
		}
	})
	var reqPeak int64
	for i := 1; i <= images; i++ {
		testenv.ResetPeakRSS(t)
		phase.Store(fmt.Sprintf("%d encode", i))
		r := req
		r.Seed = int64(i)
		r.OnStep = func(s Step) {
			if s.Step == s.Total {
				phase.Store(fmt.Sprintf("%d decode", i))
			} else {
				phase.Store(fmt.Sprintf("%d denoise", i))
			}
		}
		t0 := time.Now()
		if _, err := m.Generate(t.Context(), r); err != nil {
			close(done)
			t.Fatal(err)
		}
		reqPeak = max(reqPeak, rss("VmHWM"))
		fmt.Printf("image %d: %.1f s, peak RSS %s\n", i, time.Since(t0).Seconds(), mib(rss("VmHWM")))
	}
	close(done)
	wg.Wait()
	mt := m.Metrics()
	fmt.Printf("stages: encode %.1f s, denoise %.1f s (UNet %d calls, %.1f s), decode %.1f s\n",
		mt.Encode.Seconds(), mt.Denoise.Seconds(), mt.UNetCalls, mt.UNetTime.Seconds(), mt.Decode.Seconds())
	for i := 1; i <= images; i++ {
		for _, p := range []string{"encode", "denoise", "decode"} {
			k := fmt.Sprintf("%d %s", i, p)
			fmt.Printf("image %s: peak sampled RSS %s\n", k, mib(peaks[k]))
		}
	}
	fmt.Printf("process peak RSS (VmHWM, load included): %s against %.1f GiB\n", mib(max(loadPeak, reqPeak)), container)
}
