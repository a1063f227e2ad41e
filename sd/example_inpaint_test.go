package sd_test

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/draw"

	"github.com/sdpipe/sdpipe/sd"
)

// Repaint the middle of an image: white in the mask is repainted, and the
// pixels beyond the mask's blur come back exactly as sent.
func ExampleInpaint() {
	withDefault(func(ctx context.Context, m *sd.Model) error {
		first, err := m.Generate(ctx, sd.Request{Prompt: "a red circle on a blue background", Steps: 10, Seed: 7})
		if err != nil {
			return err
		}
		photo := first.Images[0]
		mask := image.NewGray(photo.Bounds())
		draw.Draw(mask, image.Rect(16, 16, 48, 48), image.White, image.Point{}, draw.Src)
		res, err := m.Generate(ctx, sd.Request{Prompt: "a green triangle on a blue background", Steps: 10, Seed: 8,
			InitImage: photo, Mask: mask, Inpaint: sd.Inpaint{Blur: 4}})
		if err != nil {
			return err
		}
		kept, changed := true, false
		reach := image.Rect(16, 16, 48, 48).Inset(-11) // the blur reaches int(2.5σ+0.5) = 10 pixels
		b := photo.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				same := color.NRGBAModel.Convert(res.Images[0].At(x, y)) == color.NRGBAModel.Convert(photo.At(x, y))
				if (image.Point{x, y}).In(reach) {
					changed = changed || !same
				} else {
					kept = kept && same
				}
			}
		}
		fmt.Println("kept outside:", kept, "changed inside:", changed)
		return nil
	})
	// Output: kept outside: true changed inside: true
}
