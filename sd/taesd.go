package sd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/pipeline"
	"github.com/sdpipe/sdpipe/vae"
)

// taesdConfig is what WithTAESD and WithPreviewEvery record.
type taesdConfig struct {
	path         string
	previewEvery int
}

// WithTAESD loads the tiny autoencoder TAESD (madebyollin/taesd) from path
// for live previews and fast decoding: requests with Request.Preview get
// its decode of the first image's latents every few steps
// (WithPreviewEvery) in their progress events, instead of the cheap
// latent-resolution map, rendered beside the UNet, never holding it up; and
// requests with Request.FastDecode get their final images from it instead
// of the VAE (much faster, somewhat less detailed).
//
// path is one of:
//   - a folder with vae_decoder/model.onnx (and vae_encoder/model.onnx), as
//     cmd/sdgen writes it and diffusers' AutoencoderTiny exports: pixels in
//     [-1, 1];
//   - an ONNX file of madebyollin's decoder (taesd_decoder.onnx), or a
//     folder holding one: pixels in [0, 1], as taesd.py's modules;
//   - a weights file (taesd_decoder.safetensors, .pth, or diffusers'
//     diffusion_pytorch_model.safetensors holding both halves) or a folder
//     holding them, whose graphs are built once into the cache, referring to
//     the file's bytes.
//
// An encoder beside the decoder (the same name with "encoder") is loaded
// too. TAESD takes the UNet's latents as they are (it has no scaling
// factor); its latent channels must be the UNet's.
func WithTAESD(path string) EngineOption {
	return func(c *engineConfig) { c.taesd.path = path }
}

// WithPreviewEvery sets how many denoising steps apart the TAESD of
// WithTAESD renders a request's preview (default
// pipeline.DefaultPreviewEvery, 5).
func WithPreviewEvery(steps int) EngineOption {
	return func(c *engineConfig) { c.taesd.previewEvery = steps }
}

func (c taesdConfig) check() []error {
	if c.previewEvery < 0 {
		return []error{fmt.Errorf("sd: WithPreviewEvery: negative step count %d", c.previewEvery)}
	}
	return nil
}

// taesdFiles are the files of a TAESD.
type taesdFiles struct {
	decoder, encoder string // encoder "" when there is none
	rng              vae.Range
}

// findTAESD finds the TAESD files at path (see WithTAESD), building the
// graphs of weight files into the cache.
func findTAESD(ctx context.Context, path string, cfg *loadConfig) (taesdFiles, error) {
	st, err := os.Stat(path)
	if err != nil {
		return taesdFiles{}, fmt.Errorf("sd: TAESD: %w", err)
	}
	exists := func(p string) bool { s, err := os.Stat(p); return err == nil && s.Mode().IsRegular() }
	sibling := func(p string) string { // the encoder beside a decoder file
		d, b := filepath.Split(p)
		if e := filepath.Join(d, strings.Replace(b, "decoder", "encoder", 1)); e != p && exists(e) {
			return e
		}
		return ""
	}
	file := path
	if st.IsDir() {
		if dec := filepath.Join(path, "vae_decoder", "model.onnx"); exists(dec) {
			f := taesdFiles{decoder: dec, rng: vae.Signed}
			if enc := filepath.Join(path, "vae_encoder", "model.onnx"); exists(enc) {
				f.encoder = enc
			}
			return f, nil
		}
		file = ""
		for _, pat := range []string{"*decoder*.onnx", "*decoder*.safetensors", "diffusion_pytorch_model.safetensors", "*decoder*.pth", "*decoder*.pt"} {
			if m, _ := filepath.Glob(filepath.Join(path, pat)); len(m) > 0 {
				file = m[0]
				break
			}
		}
		if file == "" {
			return taesdFiles{}, fmt.Errorf("sd: TAESD: %s holds no vae_decoder/model.onnx, *decoder*.onnx or TAESD weights (*decoder*.safetensors, diffusion_pytorch_model.safetensors)", path)
		}
	}
	if strings.EqualFold(filepath.Ext(file), ".onnx") {
		rng := vae.Unit
		if filepath.Base(file) == "model.onnx" && filepath.Base(filepath.Dir(file)) == "vae_decoder" {
			rng = vae.Signed
		}
		f := taesdFiles{decoder: file, rng: rng, encoder: sibling(file)}
		if rng == vae.Signed {
			if enc := filepath.Join(filepath.Dir(filepath.Dir(file)), "vae_encoder", "model.onnx"); exists(enc) {
				f.encoder = enc
			}
		}
		return f, nil
	}
	files := []string{file}
	if enc := sibling(file); enc != "" {
		files = append(files, enc)
	}
	cache := ""
	if cfg.ckpt.cache != "" {
		cache = filepath.Join(cfg.ckpt.cache, "taesd")
	}
	b, err := ckpt.BuildTAESD(ctx, files, ckpt.BuildOptions{CacheDir: cache, Logger: cfg.logger})
	if err != nil {
		return taesdFiles{}, fmt.Errorf("sd: TAESD: %w", err)
	}
	return taesdFiles{decoder: b.Decoder, encoder: b.Encoder, rng: vae.Signed}, nil
}

// taesdModels are the loaded TAESD sessions of a Model: one for previews,
// with few threads so that it leaves the cores to the UNet it runs beside,
// and one for fast decoding with the VAE decoder's settings.
type taesdModels struct {
	preview, fast *vae.TAESDDecoder
	encoder       *vae.TAESDEncoder // loaded when present; nothing uses it yet
}

// openTAESD loads the TAESD of WithTAESD, if any, into c.
func openTAESD(ctx context.Context, cfg *config, c *pipeline.Components) (*taesdModels, error) {
	if cfg.engine.taesd.path == "" {
		return nil, nil
	}
	files, err := findTAESD(ctx, cfg.engine.taesd.path, &cfg.load)
	if err != nil {
		return nil, err
	}
	t := &taesdModels{}
	po := cfg.load.sessionOptions(VAEDecoder)
	if p := cfg.load.comps[VAEDecoder]; p == nil || p.threads == 0 {
		po.Threads = max(1, runtime.NumCPU()/4)
	}
	po.DisableSpinning = true
	if t.preview, err = vae.OpenTAESDDecoder(ctx, files.decoder, files.rng, po); err != nil {
		return nil, fmt.Errorf("sd: TAESD decoder: %w", err)
	}
	if t.fast, err = vae.OpenTAESDDecoder(ctx, files.decoder, files.rng, cfg.load.sessionOptions(VAEDecoder)); err != nil {
		return nil, errors.Join(fmt.Errorf("sd: TAESD decoder: %w", err), t.Close())
	}
	if files.encoder != "" {
		if t.encoder, err = vae.OpenTAESDEncoder(ctx, files.encoder, files.rng, cfg.load.sessionOptions(VAEEncoder)); err != nil {
			return nil, errors.Join(fmt.Errorf("sd: TAESD encoder: %w", err), t.Close())
		}
	}
	if n := t.fast.LatentChannels(); n != c.LatentChannels && c.LatentChannels != 0 {
		return nil, errors.Join(fmt.Errorf("sd: TAESD %s takes %d latent channels, the UNet gives %d", files.decoder, n, c.LatentChannels), t.Close())
	}
	c.PreviewDecoder, c.FastDecoder = t.preview, t.fast
	cfg.load.logger.Info("sd: loaded TAESD", "decoder", files.decoder, "encoder", files.encoder)
	return t, nil
}

// Close closes the sessions; it is safe on a nil *taesdModels.
func (t *taesdModels) Close() error {
	if t == nil {
		return nil
	}
	var err error
	if t.preview != nil {
		err = errors.Join(err, t.preview.Close())
	}
	if t.fast != nil {
		err = errors.Join(err, t.fast.Close())
	}
	if t.encoder != nil {
		err = errors.Join(err, t.encoder.Close())
	}
	return err
}
