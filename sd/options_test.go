package sd_test

import (
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/sd"
)

func TestComponentString(t *testing.T) {
	tests := []struct {
		c    sd.Component
		want string
	}{
		{sd.TextEncoder, "text_encoder"},
		{sd.UNet, "unet"},
		{sd.VAEDecoder, "vae_decoder"},
		{sd.VAEEncoder, "vae_encoder"},
		{sd.Component(9), "Component(9)"},
	}
	for _, tt := range tests {
		if got := tt.c.String(); got != tt.want {
			t.Errorf("Component(%d).String() = %q, want %q", int(tt.c), got, tt.want)
		}
	}
}

// TestOptionsValidation checks that every invalid option is reported in one
// error, before the folder is even looked at (the folder does not exist).
func TestOptionsValidation(t *testing.T) {
	dir := t.TempDir() + "/no-such-model"
	tests := []struct {
		name string
		opts []sd.LoadOption
		want []string // one line each, in this order
	}{
		{
			name: "bad device and negative threads",
			opts: []sd.LoadOption{
				sd.WithDevice(sd.UNet, "gpu"),
				sd.WithThreads(sd.TextEncoder, -2),
				sd.WithThreads(sd.UNet, -1),
			},
			want: []string{
				`sd: text_encoder: negative thread count -2`,
				`sd: unet: unknown device "gpu" (want auto, coreml, cpu, cuda, directml, openvino, tensorrt, webgpu)`,
				`sd: unet: negative thread count -1`,
			},
		},
		{
			name: "unknown component and empty device",
			opts: []sd.LoadOption{
				sd.WithDevice(sd.Component(7), sd.CUDA),
				sd.WithDevice(sd.VAEDecoder, ""),
				nil,
			},
			want: []string{
				`sd: unknown component 7 (want text_encoder, unet, vae_decoder, vae_encoder)`,
				`sd: vae_decoder: unknown device "" (want auto, coreml, cpu, cuda, directml, openvino, tensorrt, webgpu)`,
			},
		},
		{
			name: "case matters",
			opts: []sd.LoadOption{sd.WithDevice(sd.VAEEncoder, "CUDA"), sd.WithSessionOptions(sd.Component(-1), sd.SessionOptions{})},
			want: []string{
				`sd: unknown component -1 (want text_encoder, unet, vae_decoder, vae_encoder)`,
				`sd: vae_encoder: unknown device "CUDA" (want auto, coreml, cpu, cuda, directml, openvino, tensorrt, webgpu)`,
			},
		},
		{
			name: "switch out of range",
			opts: []sd.LoadOption{sd.WithSessionOptions(sd.UNet, sd.SessionOptions{Spinning: 3, MemoryArena: sd.On})},
			want: []string{`sd: unet: SessionOptions.Spinning is 3, want 0 (the default), On or Off`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := sd.OpenFolder(t.Context(), dir, tt.opts...)
			if err == nil {
				t.Fatal("OpenFolder accepted invalid options")
			}
			if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("error:\n%s\nwant:\n%s", err, strings.Join(tt.want, "\n"))
			}
		})
	}
}

// TestOptionsValid checks that valid options pass validation: the error is
// then about the (missing) folder, not the options.
func TestOptionsValid(t *testing.T) {
	dir := t.TempDir() + "/no-such-model"
	_, err := sd.OpenFolder(t.Context(), dir,
		sd.WithDevice(sd.UNet, sd.CUDA), sd.WithDevice(sd.TextEncoder, sd.CPU),
		sd.WithThreads(sd.UNet, 0), sd.WithThreads(sd.VAEDecoder, 3),
		sd.WithSessionOptions(sd.UNet, sd.SessionOptions{ProviderOptions: map[string]string{"device_id": "0"}, MemoryArena: sd.Off, Spinning: sd.On}),
		sd.WithoutVAEEncoder(), sd.WithLibraryPath(""), sd.WithLogger(nil))
	if err == nil || !strings.HasPrefix(err.Error(), "sd: "+dir+": ") {
		t.Errorf("OpenFolder = %v, want the missing folder reported", err)
	}
}
