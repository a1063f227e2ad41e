package sd

import (
	"image"
	"image/color"
	"testing"
)

// TestCropRegion checks "only masked"'s crop against A1111's
// get_crop_region and expand_crop_region, worked by hand.
func TestCropRegion(t *testing.T) {
	for _, c := range []struct {
		box        image.Rectangle
		pad        int
		pw, ph, iw int
		ih         int
		want       image.Rectangle
	}{
		{image.Rect(16, 24, 40, 48), 4, 64, 64, 64, 64, image.Rect(12, 20, 44, 52)},
		{image.Rect(10, 10, 20, 50), 0, 64, 64, 64, 64, image.Rect(0, 10, 40, 50)},  // widened, moved off the left edge
		{image.Rect(0, 0, 64, 8), 0, 64, 32, 64, 64, image.Rect(0, 0, 64, 32)},      // heightened, moved off the top
		{image.Rect(50, 50, 60, 60), 8, 32, 32, 64, 64, image.Rect(42, 42, 64, 64)}, // padding clipped at the corner
		{image.Rect(56, 20, 64, 28), 0, 64, 32, 64, 64, image.Rect(48, 20, 64, 28)}, // widened against the right edge
	} {
		m := image.NewGray(image.Rect(0, 0, c.iw, c.ih))
		for y := c.box.Min.Y; y < c.box.Max.Y; y++ {
			for x := c.box.Min.X; x < c.box.Max.X; x++ {
				m.SetGray(x, y, color.Gray{1})
			}
		}
		r, ok := cropRegion(m, c.pad)
		if !ok {
			t.Fatalf("%v: no crop region", c.box)
		}
		if got := expandCrop(r, c.pw, c.ph, c.iw, c.ih); got != c.want {
			t.Errorf("box %v pad %d at %dx%d: crop %v, want %v", c.box, c.pad, c.pw, c.ph, got, c.want)
		}
	}
	if _, ok := cropRegion(image.NewGray(image.Rect(0, 0, 8, 8)), 4); ok {
		t.Error("an empty mask has a crop region")
	}
}

// TestGaussianBlur checks the mask blur's kernel: a single white pixel
// spreads symmetrically over int(2.5σ+0.5) pixels and keeps its mass.
func TestGaussianBlur(t *testing.T) {
	m := image.NewGray(image.Rect(0, 0, 41, 41))
	m.SetGray(20, 20, color.Gray{255})
	gaussianBlur(m, 1)
	sum := 0
	for _, v := range m.Pix {
		sum += int(v)
	}
	if sum < 240 || sum > 270 {
		t.Errorf("blurred mass %d, want about 255", sum)
	}
	if m.GrayAt(20, 20).Y == 0 || m.GrayAt(18, 20) != m.GrayAt(22, 20) || m.GrayAt(20, 18) != m.GrayAt(20, 22) {
		t.Errorf("not symmetric: %v %v %v", m.GrayAt(20, 20), m.GrayAt(18, 20), m.GrayAt(22, 20))
	}
	if m.GrayAt(23, 20).Y != 0 { // radius int(2.5+0.5) = 3
		t.Errorf("blur reaches %d pixels away", 3)
	}
}
