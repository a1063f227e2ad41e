// Command img2img turns an image into another with a prompt, using a Stable
// Diffusion model folder in the diffusers ONNX layout (its vae_encoder
// included), and writes PNG with the generation parameters embedded.
//
//	go run ./examples/img2img -init in.png -prompt "a green triangle" -strength 0.6 -out out.png
package main

import (
	"flag"
	"fmt"
	"image"
	_ "image/jpeg" // decode JPEG inputs
	_ "image/png"
	"os"

	"golang.org/x/image/draw"

	"github.com/sdpipe/sdpipe/examples/internal/cli"
	"github.com/sdpipe/sdpipe/sd"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "img2img:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		model     = flag.String("model", "", "model folder (diffusers ONNX layout); empty = the default model")
		initPath  = flag.String("init", "", "initial image (PNG or JPEG); required")
		prompt    = flag.String("prompt", "", "prompt")
		negative  = flag.String("negative", "", "negative prompt")
		width     = flag.Int("width", 0, "resize the image to this width, a multiple of 8 (0 = its own, rounded down to 8)")
		height    = flag.Int("height", 0, "resize the image to this height (0 = its own, rounded down to 8)")
		strength  = flag.Float64("strength", 0.75, "how much to change the image, in (0, 1]")
		steps     = flag.Int("steps", 20, "denoising steps of the full schedule")
		guidance  = cli.Guidance()
		sched     = flag.String("scheduler", "", "scheduler (diffusers class or A1111 sampler name)")
		legacy    = flag.Bool("legacy-timesteps", false, "use OnnxStableDiffusionImg2ImgPipeline's timestep logic instead of the current diffusers one")
		seed      = flag.Int64("seed", -1, "seed (-1 = random)")
		generator = flag.String("generator", "numpy", "random generator: numpy or torch")
		out       = flag.String("out", "out.png", "output file")
	)
	flag.Parse()
	if *initPath == "" {
		return fmt.Errorf("-init is required")
	}
	ctx, stop := cli.Interruptible()
	defer stop()
	kind, err := sd.ParseGenerator(*generator)
	if err != nil {
		return err
	}
	f, err := os.Open(*initPath)
	if err != nil {
		return err
	}
	img, _, err := image.Decode(f)
	f.Close()
	if err != nil {
		return fmt.Errorf("%s: %w", *initPath, err)
	}
	w, h := *width, *height
	if w == 0 {
		w = img.Bounds().Dx() / 8 * 8
	}
	if h == 0 {
		h = img.Bounds().Dy() / 8 * 8
	}
	if w != img.Bounds().Dx() || h != img.Bounds().Dy() {
		dst := image.NewNRGBA(image.Rect(0, 0, w, h))
		draw.CatmullRom.Scale(dst, dst.Bounds(), img, img.Bounds(), draw.Src, nil)
		img = dst
	}
	dir, err := cli.Model(*model)
	if err != nil {
		return err
	}
	m, err := sd.Open(ctx, dir)
	if err != nil {
		return err
	}
	defer m.Close()
	logic := sd.Img2ImgModern
	if *legacy {
		logic = sd.Img2ImgLegacyONNX
	}
	hd, err := m.Submit(ctx, sd.Request{
		Prompt: *prompt, NegativePrompt: *negative, InitImage: img, Strength: *strength, Img2ImgLogic: logic,
		Steps: *steps, GuidanceScale: *guidance, Scheduler: *sched, Seed: *seed, Generator: kind,
	})
	if err != nil {
		return err
	}
	cli.ProgressBar(os.Stderr, "denoising", hd.Progress())
	res, err := hd.Wait(ctx)
	if err != nil {
		return err
	}
	names, err := cli.WritePNGs(res, *out)
	if err != nil {
		return err
	}
	for i, name := range names {
		fmt.Printf("%s (seed %d)\n", name, res.Seeds[i])
	}
	return nil
}
