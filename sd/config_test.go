package sd

import "testing"

func TestSpinningOption(t *testing.T) {
	for _, allow := range []bool{true, false} {
		c, err := newConfig([]Option{WithSpinning(allow)})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range components {
			if got := c.ortOptions(k).NoSpinning; got == allow {
				t.Errorf("WithSpinning(%v): %v's session has NoSpinning %v", allow, k, got)
			}
		}
	}
	c, err := newConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ortOptions(UNet).NoSpinning {
		t.Error("spinning is off by default")
	}
}

func TestMemoryPatternOption(t *testing.T) {
	c, err := newConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range components {
		want := k != TextEncoder
		if got := c.ortOptions(k).DisableMemPattern; got != want {
			t.Errorf("default: %v's memory pattern disabled %v, want %v", k, got, want)
		}
	}
	c, err = newConfig([]Option{WithMemoryPattern(VAEDecoder, true), WithMemoryPattern(TextEncoder, false)})
	if err != nil {
		t.Fatal(err)
	}
	if c.ortOptions(VAEDecoder).DisableMemPattern || !c.ortOptions(TextEncoder).DisableMemPattern || !c.ortOptions(VAEEncoder).DisableMemPattern {
		t.Errorf("WithMemoryPattern not applied: decoder %+v, text encoder %+v", c.ortOptions(VAEDecoder), c.ortOptions(TextEncoder))
	}
	c, err = newConfig([]Option{WithMemoryArena(VAEDecoder, false)})
	if err != nil {
		t.Fatal(err)
	}
	if !c.ortOptions(VAEDecoder).DisableMemArena || c.ortOptions(UNet).DisableMemArena {
		t.Errorf("WithMemoryArena not applied: decoder %+v, unet %+v", c.ortOptions(VAEDecoder), c.ortOptions(UNet))
	}
}
