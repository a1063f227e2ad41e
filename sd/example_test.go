package sd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/sdpipe/sdpipe/models"
	"github.com/sdpipe/sdpipe/sd"
)

// Open the embedded default model, generate an image, and write it as PNG
// with its parameters embedded, as AUTOMATIC1111 does.
func Example() {
	ctx := context.Background()
	dir, err := models.DefaultDir() // written to the user's cache on first use
	if err != nil {
		fmt.Println(err)
		return
	}
	m, err := sd.Open(ctx, dir)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer m.Close()
	res, err := m.Generate(ctx, sd.Request{Prompt: "a red circle on a blue background", Steps: 20, Seed: 7})
	if err != nil {
		fmt.Println(err)
		return
	}
	var png bytes.Buffer // an *os.File in a real program
	if err := res.EncodePNG(&png, 0); err != nil {
		fmt.Println(err)
		return
	}
	params, err := sd.ReadPNGParameters(&png)
	if err != nil {
		fmt.Println(err)
		return
	}
	// the model's defaults come from its sdpipe.json
	fmt.Println(res.Images[0].Bounds().Size(), "seed", res.Seeds[0], "guidance", *res.Request.GuidanceScale)
	fmt.Println(strings.Split(params, "\n")[0])
	// Output:
	// (64,64) seed 7 guidance 2.5
	// a red circle on a blue background
}

// Submit returns at once; the progress events arrive on a channel.
func ExampleModel_Submit() {
	withDefault(func(ctx context.Context, m *sd.Model) error {
		h, err := m.Submit(ctx, sd.Request{Prompt: "a yellow square on a black background", Steps: 10, Seed: 3})
		if err != nil {
			return err
		}
		var last sd.Progress
		for ev := range h.Progress() {
			last = ev // a program would draw a progress bar
		}
		res, err := h.Wait(ctx)
		if err != nil {
			return err
		}
		// PNDM, the model's scheduler, makes one UNet call more than its steps
		fmt.Printf("step %d/%d, seed %d\n", last.Step, last.Total, res.Seeds[0])
		return nil
	}, sd.WithMode(sd.Throughput), sd.WithBatching(4, 0))
	// Output: step 11/11, seed 3
}

// Cancel stops a request within one UNet call; Wait then returns an error
// matching context.Canceled.
func ExampleHandle_Cancel() {
	withDefault(func(ctx context.Context, m *sd.Model) error {
		h, err := m.Submit(ctx, sd.Request{Prompt: "a green triangle", Steps: 200, Seed: 1})
		if err != nil {
			return err
		}
		<-h.Progress() // the first step is done
		h.Cancel()
		_, err = h.Wait(ctx)
		fmt.Println(errors.Is(err, context.Canceled))
		return nil
	})
	// Output: true
}

// Image-to-image: InitImage is the starting point, Strength how much of it
// changes.
func ExampleRequest_img2img() {
	withDefault(func(ctx context.Context, m *sd.Model) error {
		first, err := m.Generate(ctx, sd.Request{Prompt: "a blue circle on a white background", Steps: 20, Seed: 2})
		if err != nil {
			return err
		}
		res, err := m.Generate(ctx, sd.Request{
			Prompt:    "a red circle on a white background",
			InitImage: first.Images[0], // any image.Image of the request's size
			Strength:  0.6,             // 60 % of the schedule: 12 of 20 steps
			Steps:     20,
			Seed:      2,
		})
		if err != nil {
			return err
		}
		fmt.Println(res.Images[0].Bounds().Size(), res.Metrics.Steps, "UNet calls")
		return nil
	})
	// Output: (64,64) 13 UNet calls
}

// OnStep sees every step's latents and the text embeddings, as diffusers'
// callback_on_step_end does.
func ExampleRequest_onStep() {
	withDefault(func(ctx context.Context, m *sd.Model) error {
		var shapes []string
		_, err := m.Generate(ctx, sd.Request{
			Prompt: "a white cross on a purple background", Steps: 2, Seed: 5, Scheduler: "Euler",
			OnStep: func(s sd.Step) {
				shapes = append(shapes, fmt.Sprintf("step %d/%d at t=%.0f: latents %v, text %v",
					s.Step, s.Total, s.Timestep, s.Latents.Shape(), s.TextEmbeddings.Shape()))
			},
		})
		if err != nil {
			return err
		}
		fmt.Println(strings.Join(shapes, "\n"))
		return nil
	})
	// Output:
	// step 1/2 at t=501: latents (1, 4, 8, 8), text (2, 77, 64)
	// step 2/2 at t=1: latents (1, 4, 8, 8), text (2, 77, 64)
}

// withDefault opens the embedded default model as Example does, with opts,
// runs f on it and closes it; it prints the error of either, as Example
// does.
func withDefault(f func(ctx context.Context, m *sd.Model) error, opts ...sd.Option) {
	ctx := context.Background()
	m, err := openDefault(ctx, opts...)
	if err == nil {
		defer m.Close()
		err = f(ctx, m)
	}
	if err != nil {
		fmt.Println(err)
	}
}

// openDefault opens the embedded default model with opts.
func openDefault(ctx context.Context, opts ...sd.Option) (*sd.Model, error) {
	dir, err := models.DefaultDir()
	if err != nil {
		return nil, err
	}
	return sd.Open(ctx, dir, opts...)
}
