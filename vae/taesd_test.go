package vae_test

import (
	"errors"
	"math"
	"path/filepath"
	"slices"
	"testing"

	"gorgonia.org/tensor"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/vae"
)

// TestTAESDSafetensorsMatchesONNX writes a random-weight tiny TAESD as an
// ONNX folder (what cmd/sdgen writes) and the same weights as madebyollin's
// two safetensors files, builds graphs from the files in Go, and checks
// that both halves give the folder's outputs: exactly for float32 files,
// within float16 rounding for float16 ones.
func TestTAESDSafetensorsMatchesONNX(t *testing.T) {
	testenv.RequireORT(t)
	const seed = 5
	tc := modelgen.TinyTAESD()
	folder := t.TempDir()
	if err := modelgen.WriteTAESD(folder, tc, modelgen.Options{Seed: seed}); err != nil {
		t.Fatal(err)
	}
	ctx, o := t.Context(), session.Options{Threads: 1}
	refDec, err := vae.OpenTAESDDecoder(ctx, filepath.Join(folder, "vae_decoder", "model.onnx"), vae.Signed, o)
	if err != nil {
		t.Fatal(err)
	}
	defer refDec.Close()
	refEnc, err := vae.OpenTAESDEncoder(ctx, filepath.Join(folder, "vae_encoder", "model.onnx"), vae.Signed, o)
	if err != nil {
		t.Fatal(err)
	}
	defer refEnc.Close()

	lat := make([]float32, 1*4*6*8)
	for i := range lat {
		lat[i] = float32(2 * math.Sin(float64(i)*0.7))
	}
	latents := tensor.New(tensor.WithShape(1, 4, 6, 8), tensor.WithBacking(lat))
	img := make([]float32, 1*3*48*64)
	for i := range img {
		img[i] = float32(math.Cos(float64(i) * 0.3))
	}
	image := tensor.New(tensor.WithShape(1, 3, 48, 64), tensor.WithBacking(img))
	wantPix, err := refDec.Decode(ctx, latents)
	if err != nil {
		t.Fatal(err)
	}
	wantLat, err := refEnc.Encode(ctx, image)
	if err != nil {
		t.Fatal(err)
	}
	if s := wantPix.Shape(); s[1] != 3 || s[2] != 48 || s[3] != 64 {
		t.Fatalf("decoded shape %v, want [1 3 48 64]", s)
	}
	if s := wantLat.Shape(); s[1] != 4 || s[2] != 6 || s[3] != 8 {
		t.Fatalf("encoded shape %v, want [1 4 6 8]", s)
	}

	for _, tt := range []struct {
		dtype safetensors.DType
		tol   float64
	}{{safetensors.F32, 1e-5}, {safetensors.F16, 0.05}} {
		t.Run(string(tt.dtype), func(t *testing.T) {
			dir := t.TempDir()
			encFile, decFile, err := ckpt.WriteTAESDFiles(dir, tc, seed, tt.dtype)
			if err != nil {
				t.Fatal(err)
			}
			b, err := ckpt.BuildTAESD(ctx, []string{decFile, encFile}, ckpt.BuildOptions{CacheDir: filepath.Join(dir, "cache")})
			if err != nil {
				t.Fatal(err)
			}
			if b.Encoder == "" {
				t.Fatal("no encoder built")
			}
			dec, err := vae.OpenTAESDDecoder(ctx, b.Decoder, vae.Signed, o)
			if err != nil {
				t.Fatal(err)
			}
			defer dec.Close()
			enc, err := vae.OpenTAESDEncoder(ctx, b.Encoder, vae.Signed, o)
			if err != nil {
				t.Fatal(err)
			}
			defer enc.Close()
			gotPix, err := dec.Decode(ctx, latents)
			if err != nil {
				t.Fatal(err)
			}
			gotLat, err := enc.Encode(ctx, image)
			if err != nil {
				t.Fatal(err)
			}
			if d := testenv.MaxAbsDiff(gotPix.Data().([]float32), wantPix.Data().([]float32)); d > tt.tol || math.IsNaN(d) {
				t.Errorf("decoder from %s: max |Δ| %g to the ONNX folder's, want ≤ %g", tt.dtype, d, tt.tol)
			}
			if d := testenv.MaxAbsDiff(gotLat.Data().([]float32), wantLat.Data().([]float32)); d > tt.tol || math.IsNaN(d) {
				t.Errorf("encoder from %s: max |Δ| %g to the ONNX folder's, want ≤ %g", tt.dtype, d, tt.tol)
			}
			again, err := ckpt.BuildTAESD(ctx, []string{decFile, encFile}, ckpt.BuildOptions{CacheDir: filepath.Join(dir, "cache")})
			if err != nil || !again.Cached || again.Dir != b.Dir {
				t.Errorf("second build: %+v, %v; want the cached %s", again, err, b.Dir)
			}
		})
	}

	// A decoder in the unit range gives the same pixels mapped to [-1, 1].
	unit, err := vae.OpenTAESDDecoder(ctx, filepath.Join(folder, "vae_decoder", "model.onnx"), vae.Unit, o)
	if err != nil {
		t.Fatal(err)
	}
	defer unit.Close()
	got, err := unit.Decode(ctx, latents)
	if err != nil {
		t.Fatal(err)
	}
	want := wantPix.Data().([]float32)
	for i, v := range got.Data().([]float32) {
		if d := math.Abs(float64(v - (2*want[i] - 1))); d > 1e-5 {
			t.Fatalf("unit-range decoder pixel %d = %g, want %g", i, v, 2*want[i]-1)
		}
	}
	if _, err := refDec.Decode(ctx, tensor.New(tensor.WithShape(1, 3, 4, 4), tensor.WithBacking(make([]float32, 48)))); !errors.Is(err, vae.ErrInput) {
		t.Errorf("Decode(3 channels) = %v, want ErrInput", err)
	}
}

// TestDetectTAESDLayouts checks that diffusers', ComfyUI's and
// madebyollin's key layouts give the same architecture and parameters.
func TestDetectTAESDLayouts(t *testing.T) {
	tc := modelgen.FullTAESD()
	dir := t.TempDir()
	encFile, decFile, err := ckpt.WriteTAESDFiles(dir, tc, 1, safetensors.F16)
	if err != nil {
		t.Fatal(err)
	}
	var orig []safetensors.Info
	for _, p := range []string{encFile, decFile} {
		f, err := ckpt.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		hs, err := ckpt.DetectTAESD(f.Tensors)
		if err != nil {
			t.Fatal(err)
		}
		if len(hs) != 1 || hs[0].Decoder != (p == decFile) {
			t.Fatalf("%s: halves %+v", p, hs)
		}
		c := hs[0].Config
		if c.Channels != 64 || c.LatentChannels != 4 {
			t.Errorf("%s: %+v, want 64 channels and 4 latent channels", p, c)
		}
		blocks, want := c.EncoderBlocks, tc.EncoderBlocks
		if hs[0].Decoder {
			blocks, want = c.DecoderBlocks, tc.DecoderBlocks
		}
		if !slices.Equal(blocks, want) {
			t.Errorf("%s: blocks %v, want %v", p, blocks, want)
		}
		for _, ti := range f.Tensors {
			name := "taesd_encoder." + ti.Name
			if p == decFile {
				name = "taesd_decoder." + ti.Name
			}
			orig = append(orig, safetensors.Info{Name: name, DType: ti.DType, Shape: ti.Shape})
		}
		f.Close()
	}
	// ComfyUI's combined layout, with its scale and shift
	comfy := append(orig, safetensors.Info{Name: "vae_scale", DType: safetensors.F32}, safetensors.Info{Name: "vae_shift", DType: safetensors.F32})
	hs, err := ckpt.DetectTAESD(comfy)
	if err != nil || len(hs) != 2 {
		t.Fatalf("ComfyUI layout: %v, %v", hs, err)
	}
	// diffusers' names are what the halves map to
	var diffusers []safetensors.Info
	for _, h := range hs {
		for name, p := range h.Params {
			diffusers = append(diffusers, safetensors.Info{Name: name, DType: safetensors.F16, Shape: p.Shape})
		}
	}
	hd, err := ckpt.DetectTAESD(diffusers)
	if err != nil || len(hd) != 2 {
		t.Fatalf("diffusers layout: %v, %v", hd, err)
	}
	for i := range hd {
		if len(hd[i].Params) != len(hs[i].Params) || !slices.Equal(hd[i].Config.DecoderBlocks, hs[i].Config.DecoderBlocks) {
			t.Errorf("diffusers layout half %d: %d params %+v, want %d %+v", i, len(hd[i].Params), hd[i].Config, len(hs[i].Params), hs[i].Config)
		}
	}
	if _, err := ckpt.DetectTAESD([]safetensors.Info{{Name: "model.diffusion_model.input_blocks.0.0.weight", DType: safetensors.F16, Shape: []int64{320, 4, 3, 3}}}); err == nil {
		t.Error("a UNet key was taken for TAESD")
	}
}
