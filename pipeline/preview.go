package pipeline

import (
	"image"
	"math"
)

// latentRGB is the well-known linear map from SD 1.x latents to RGB, good
// enough for a preview at latent resolution without running the VAE.
var latentRGB = [4][3]float32{
	{0.298, 0.207, 0.208},
	{0.187, 0.286, 0.173},
	{-0.158, 0.189, 0.264},
	{-0.184, -0.271, -0.473},
}

// preview renders latents [c, h, w] as an h×w image.
func preview(lat []float32, c, h, w int) image.Image {
	img := image.NewNRGBA(image.Rect(0, 0, w, h))
	for i := range h * w {
		var rgb [3]float32
		for ch := range min(c, 4) {
			v := lat[ch*h*w+i]
			for k := range 3 {
				rgb[k] += v * latentRGB[ch][k]
			}
		}
		for k := range 3 {
			x := (rgb[k] + 1) / 2 * 255
			if math.IsNaN(float64(x)) {
				x = 0
			}
			img.Pix[i*4+k] = uint8(min(max(x, 0), 255))
		}
		img.Pix[i*4+3] = 255
	}
	return img
}
