// Command txt2img generates images from a prompt with a Stable Diffusion
// model folder in the diffusers ONNX layout, and writes them as PNG with
// the generation parameters embedded (AUTOMATIC1111's "parameters" chunk).
//
//	go run ./examples/txt2img -prompt "a red circle on a blue background" -out out.png
//
// Without -model it uses the default model, created on first use.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "txt2img:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		model     = flag.String("model", "", "model folder (diffusers ONNX layout); empty = the default model")
		prompt    = flag.String("prompt", "a red circle on a blue background", "prompt (AUTOMATIC1111 syntax: (word:1.3), [word], BREAK)")
		negative  = flag.String("negative", "", "negative prompt")
		width     = flag.Int("width", 0, "width, a multiple of 8 (0 = the model's default)")
		height    = flag.Int("height", 0, "height, a multiple of 8 (0 = the model's default)")
		steps     = flag.Int("steps", 20, "denoising steps")
		guidance  = cli.Guidance()
		sched     = flag.String("scheduler", "", `scheduler: a diffusers class or an A1111 sampler name ("Euler a", "DPM++ 2M Karras"); empty = the model's`)
		seed      = flag.Int64("seed", -1, "seed (-1 = random)")
		n         = flag.Int("n", 1, "images (image i uses seed+i)")
		generator = flag.String("generator", "numpy", "random generator: numpy (diffusers ONNX) or torch (diffusers PyTorch on CPU)")
		out       = flag.String("out", "out.png", "output file; with -n > 1, out-1.png, out-2.png…")
		threads   = flag.Int("threads", 0, "intra-op threads per model (0 = one per core)")
	)
	flag.Parse()
	ctx, stop := cli.Interruptible()
	defer stop()

	kind, err := sd.ParseGenerator(*generator)
	if err != nil {
		return err
	}
	dir, err := cli.Model(*model)
	if err != nil {
		return err
	}
	var opts []sd.Option
	start := time.Now()
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder} {
		opts = append(opts, sd.WithThreads(c, *threads))
	}
	m, err := sd.Open(ctx, dir, append(opts, sd.WithoutVAEEncoder())...)
	if err != nil {
		return err
	}
	defer m.Close()
	fmt.Fprintf(os.Stderr, "loaded %s in %.1fs\n", dir, time.Since(start).Seconds())

	h, err := m.Submit(ctx, sd.Request{
		Prompt: *prompt, NegativePrompt: *negative,
		Width: *width, Height: *height, Steps: *steps, GuidanceScale: *guidance,
		Scheduler: *sched, Seed: *seed, ImagesPerPrompt: *n, Generator: kind,
	})
	if err != nil {
		return err
	}
	cli.ProgressBar(os.Stderr, "denoising", h.Progress())
	res, err := h.Wait(ctx)
	if err != nil {
		return err
	}
	names, err := cli.WritePNGs(res, *out)
	if err != nil {
		return err
	}
	met := res.Metrics
	for i, name := range names {
		fmt.Printf("%s (seed %d)\n", name, res.Seeds[i])
	}
	fmt.Fprintf(os.Stderr, "encode %.2fs, denoise %.2fs (%.1f steps/s), decode %.2fs, total %.2fs\n",
		met.Encode.Seconds(), met.Denoise.Seconds(), met.StepsPerSecond(), met.Decode.Seconds(), met.Total.Seconds())
	return nil
}
