package sd

import "testing"

func loadConfigOf(t *testing.T, opts ...LoadOption) *loadConfig {
	t.Helper()
	c, err := newLoadConfig(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestSpinningOption(t *testing.T) {
	for _, s := range []Switch{On, Off} {
		var opts []LoadOption
		for _, k := range components {
			opts = append(opts, WithSessionOptions(k, SessionOptions{Spinning: s}))
		}
		c := loadConfigOf(t, opts...)
		for _, k := range components {
			if got := c.sessionOptions(k).DisableSpinning; got != (s == Off) {
				t.Errorf("Spinning %v: %v's session has DisableSpinning %v", s, k, got)
			}
		}
	}
	if loadConfigOf(t).sessionOptions(UNet).DisableSpinning {
		t.Error("spinning is off by default")
	}
}

func TestMemoryPatternOption(t *testing.T) {
	c := loadConfigOf(t)
	for _, k := range components {
		want := k != TextEncoder
		if got := c.sessionOptions(k).DisableMemoryPattern; got != want {
			t.Errorf("default: %v's memory pattern disabled %v, want %v", k, got, want)
		}
	}
	c = loadConfigOf(t, WithSessionOptions(VAEDecoder, SessionOptions{MemoryPattern: On}), WithSessionOptions(TextEncoder, SessionOptions{MemoryPattern: Off}))
	if c.sessionOptions(VAEDecoder).DisableMemoryPattern || !c.sessionOptions(TextEncoder).DisableMemoryPattern || !c.sessionOptions(VAEEncoder).DisableMemoryPattern {
		t.Errorf("MemoryPattern not applied: decoder %+v, text encoder %+v", c.sessionOptions(VAEDecoder), c.sessionOptions(TextEncoder))
	}
	c = loadConfigOf(t)
	for _, k := range components {
		want := k == VAEDecoder || k == VAEEncoder
		if got := c.sessionOptions(k).DisableMemoryArena; got != want {
			t.Errorf("default: %v's memory arena disabled %v, want %v", k, got, want)
		}
	}
	c = loadConfigOf(t, WithSessionOptions(VAEDecoder, SessionOptions{MemoryArena: On}), WithSessionOptions(UNet, SessionOptions{MemoryArena: Off}))
	if c.sessionOptions(VAEDecoder).DisableMemoryArena || !c.sessionOptions(UNet).DisableMemoryArena || !c.sessionOptions(VAEEncoder).DisableMemoryArena {
		t.Errorf("MemoryArena not applied: decoder %+v, unet %+v", c.sessionOptions(VAEDecoder), c.sessionOptions(UNet))
	}
	c = loadConfigOf(t, WithSessionOptions(UNet, SessionOptions{ProviderOptions: map[string]string{"device_id": "1"}}), WithThreads(UNet, 3))
	if o := c.sessionOptions(UNet); o.ProviderOptions["device_id"] != "1" || o.Threads != 3 {
		t.Errorf("ProviderOptions or threads not applied: %+v", o)
	}
}
