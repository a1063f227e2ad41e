package sd_test

import (
	"context"
	"fmt"
	"os"

	"github.com/sdpipe/sdpipe/sd"
)

// Open a diffusers ONNX folder, generate an image, and save it with its
// parameters embedded.
func Example() {
	ctx := context.Background()
	m, err := sd.Open(ctx, "models/sd15-onnx", sd.WithWorkers(sd.Denoise, 1))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	res, err := m.Generate(ctx, sd.Request{Prompt: "a lighthouse at dusk", Steps: 25, Seed: 7})
	if err != nil {
		fmt.Println(err)
		return
	}
	f, err := os.Create("lighthouse.png")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer f.Close()
	_ = res.Images[0] // an image.Image; pipeline.EncodePNG writes it with res.Infotexts[0]
}

// Submit returns at once; progress events arrive on a channel.
func ExampleModel_Submit() {
	ctx := context.Background()
	m, err := sd.Open(ctx, "models/sd15-onnx", sd.WithMode(sd.Throughput), sd.WithBatching(4, 0))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	h, err := m.Submit(ctx, sd.Request{Prompt: "a red fox", Steps: 20, Seed: -1})
	if err != nil {
		fmt.Println(err)
		return
	}
	for ev := range h.Progress() {
		fmt.Printf("\rstep %d/%d", ev.Step, ev.Total)
	}
	res, err := h.Wait(ctx)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("seed", res.Seeds[0])
}
