// Command ckptgen writes random-weight Stable Diffusion checkpoints in the
// original single-file layout (tensor names and shapes exactly as released
// files have them), with the same weights modelgen gives a diffusers ONNX
// folder of that architecture, and measures opening them.
//
//	go run ./cmd/ckptgen -family sd1 -out /tmp/sd15.safetensors -folder /tmp/sd15-onnx
//	go run ./cmd/ckptgen -measure /tmp/sd15.safetensors -tokenizer DIR -size 256
//	go run ./cmd/ckptgen -measure /tmp/sd15-onnx -size 256
//
// -family is sd1, sd1-inpaint, sd2 or sdxl (full size); -dtype F32, F16 or
// BF16; -folder also writes the matching ONNX folder (modelgen.Write, the
// same seed). -measure opens a checkpoint (through ckpt.Build, into
// -cache) or a folder with sd.OpenFolder, runs -calls guided UNet calls
// (batch 2) at -size pixels after two warm-up calls, and prints the open
// time, the mean call time and the peak RSS. Run each measurement in its
// own process, under the heavy lock.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/sd"
	"gorgonia.org/tensor"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "ckptgen:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("ckptgen", flag.ContinueOnError)
	var (
		family  = fs.String("family", "sd1", "architecture: sd1, sd1-inpaint, sd2, sdxl")
		out     = fs.String("out", "", "checkpoint file to write")
		folder  = fs.String("folder", "", "also write the matching diffusers ONNX folder here")
		dtype   = fs.String("dtype", "F32", "tensor type: F32, F16 or BF16")
		seed    = fs.Uint64("seed", 0, "weight seed")
		measure = fs.String("measure", "", "checkpoint or model folder to open and time")
		tokDir  = fs.String("tokenizer", "", "CLIP tokenizer folder for a checkpoint (vocab.json, merges.txt)")
		cache   = fs.String("cache", "", "cache folder for built checkpoints (default: the user cache)")
		size    = fs.Int("size", 256, "image size of the timed UNet calls")
		calls   = fs.Int("calls", 3, "timed UNet calls")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *measure != "" {
		return measureOpen(stdout, *measure, *tokDir, *cache, *size, *calls)
	}
	if *out == "" {
		fs.Usage()
		return errors.New("-out or -measure is required")
	}
	fam, inpaint := ckpt.Family(strings.TrimSuffix(*family, "-inpaint")), strings.HasSuffix(*family, "-inpaint")
	a, err := ckpt.Published(fam, inpaint)
	if err != nil {
		return err
	}
	cfg, err := ckpt.ModelConfig(a)
	if err != nil {
		return err
	}
	dt := safetensors.DType(*dtype)
	if dt != safetensors.F32 && dt != safetensors.F16 && dt != safetensors.BF16 {
		return fmt.Errorf("-dtype %s: want F32, F16 or BF16", *dtype)
	}
	t0 := time.Now()
	if err := ckpt.WriteOriginal(*out, a, cfg, *seed, dt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s (%s, %s) in %v\n", *out, *family, dt, time.Since(t0).Round(time.Millisecond))
	if *folder != "" {
		t0 = time.Now()
		if err := modelgen.Write(*folder, cfg, modelgen.Options{Seed: *seed}); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s in %v\n", *folder, time.Since(t0).Round(time.Millisecond))
	}
	return nil
}

// peakRSS returns VmHWM from /proc/self/status in bytes (0 when unknown).
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

func measureOpen(w io.Writer, path, tokDir, cache string, size, calls int) error {
	ctx := context.Background()
	t0 := time.Now()
	dir := path
	var build time.Duration
	if st, err := os.Stat(path); err == nil && !st.IsDir() {
		b, err := ckpt.Build(ctx, path, ckpt.BuildOptions{CacheDir: cache, TokenizerDir: tokDir})
		if err != nil {
			return err
		}
		dir, build = b.Dir, time.Since(t0)
		fmt.Fprintf(w, "built %s (cached %v, copied %v) in %v\n", dir, b.Cached, b.Copied, build.Round(time.Millisecond))
	}
	f, err := sd.OpenFolder(ctx, dir)
	if err != nil {
		return err
	}
	defer f.Close()
	open := time.Since(t0)
	rssOpen := peakRSS()
	lat := size / 8
	sample := tensor.New(tensor.WithShape(2, f.UNet.InChannels(), lat, lat), tensor.WithBacking(make([]float32, 2*f.UNet.InChannels()*lat*lat)))
	hidden := f.TextEncoder.HiddenSize()
	cond := tensor.New(tensor.WithShape(2, 77, hidden), tensor.WithBacking(make([]float32, 2*77*hidden)))
	var timed time.Duration
	for i := range calls + 2 {
		t := time.Now()
		if _, err := f.UNet.Predict(ctx, sample, []float64{501}, cond); err != nil {
			return err
		}
		if i >= 2 {
			timed += time.Since(t)
		}
	}
	fmt.Fprintf(w, "open %v (of which building %v), peak RSS after open %.2f GiB; UNet call (batch 2, %d²) %v; peak RSS %.2f GiB\n",
		open.Round(time.Millisecond), build.Round(time.Millisecond), float64(rssOpen)/(1<<30), size,
		(timed / time.Duration(calls)).Round(time.Millisecond), float64(peakRSS())/(1<<30))
	return nil
}
