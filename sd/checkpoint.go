package sd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/ckptrun"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
)

// checkpointConfig holds the options of single-file checkpoints.
type checkpointConfig struct {
	tokenizer   string
	vae         string
	loras       []ckpt.LoRASpec
	loraDir     string
	embeddings  string
	skipUnknown bool
	cache       string
	prediction  string
}

// WithTokenizer gives the folder holding the CLIP tokenizer files
// (vocab.json, merges.txt) for a single-file checkpoint; by default they
// are looked for in tokenizer/ beside the checkpoint, then in the cache's
// tokenizer/ folder.
func WithTokenizer(dir string) LoadOption {
	return func(c *loadConfig) { c.ckpt.tokenizer = dir }
}

// WithVAEFile replaces a single-file checkpoint's VAE with the VAE file at
// path (original layout, first_stage_model.* or without prefix, or diffusers
// layout).
func WithVAEFile(path string) LoadOption {
	return func(c *loadConfig) { c.ckpt.vae = path }
}

// WithLoRA merges the LoRA file at path into a single-file checkpoint's
// weights at open, at multiplier (several may be given). For LoRAs chosen
// per request, use WithLoRADir.
func WithLoRA(path string, multiplier float64) LoadOption {
	return func(c *loadConfig) {
		c.ckpt.loras = append(c.ckpt.loras, ckpt.LoRASpec{Path: path, Multiplier: float32(multiplier)})
	}
}

// WithLoRADir lets requests apply the LoRAs of folder dir by name
// (Request.LoRAs, or <lora:name:multiplier> in the prompt) without
// rebuilding anything; requests with different LoRAs still share UNet
// calls. Single-file checkpoints only.
func WithLoRADir(dir string) LoadOption {
	return func(c *loadConfig) { c.ckpt.loraDir = dir }
}

// WithEmbeddingsDir lets prompts use the textual-inversion embeddings of
// folder dir by file name, with weighting, in negative prompts too.
// Single-file checkpoints only.
func WithEmbeddingsDir(dir string) LoadOption {
	return func(c *loadConfig) { c.ckpt.embeddings = dir }
}

// WithSkipUnknownLoRAKeys applies the keys of a LoRA that fit the model and
// skips the rest, instead of refusing the LoRA with an error naming them.
func WithSkipUnknownLoRAKeys() LoadOption {
	return func(c *loadConfig) { c.ckpt.skipUnknown = true }
}

// WithCheckpointCache builds single-file checkpoints into dir instead of
// <cache>/checkpoints ($SDPIPE_CACHE_DIR or the user cache). The graphs
// refer to the checkpoint through hard links, so dir should be on the
// checkpoints' file system (otherwise the weights are copied, with a
// warning).
func WithCheckpointCache(dir string) LoadOption {
	return func(c *loadConfig) { c.ckpt.cache = dir }
}

// WithPrediction overrides a single-file checkpoint's prediction type
// ("epsilon" or "v_prediction"), which the file does not record: SD 2.x
// checkpoints are taken as v_prediction (the 768-pixel models), as
// diffusers does; the 512-pixel SD 2.x base models need "epsilon".
func WithPrediction(p string) LoadOption {
	return func(c *loadConfig) { c.ckpt.prediction = p }
}

// checkpointExts are the extensions of single-file checkpoints.
var checkpointExts = []string{".safetensors", ".ckpt"}

// checkpointPath returns the single-file checkpoint that path names: the
// file itself, or the only checkpoint file of a folder without
// model_index.json.
func checkpointPath(path string) (string, bool, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", false, nil // OpenFolder reports it
	}
	if !st.IsDir() {
		for _, e := range checkpointExts {
			if strings.EqualFold(filepath.Ext(path), e) {
				return path, true, nil
			}
		}
		return "", false, nil
	}
	if _, err := os.Stat(filepath.Join(path, indexFile)); err == nil {
		return "", false, nil
	}
	var found []string
	for _, e := range checkpointExts {
		m, _ := filepath.Glob(filepath.Join(path, "*"+e))
		found = append(found, m...)
	}
	switch len(found) {
	case 0:
		return "", false, nil
	case 1:
		return found[0], true, nil
	}
	return "", false, fmt.Errorf("sd: %s holds %d checkpoints (%s): open one of them", path, len(found), strings.Join(found, ", "))
}

// openCheckpoint builds the checkpoint at path (see ckpt.Build) into a model
// folder in the cache and returns it; with per-request LoRAs or embeddings
// it also opens the runtime components, which Open uses instead of the
// folder's.
func openCheckpoint(ctx context.Context, path string, cfg *loadConfig) (string, *ckptrun.Components, error) {
	perRequest := cfg.ckpt.loraDir != "" || cfg.ckpt.embeddings != ""
	b, err := ckpt.Build(ctx, path, ckpt.BuildOptions{
		CacheDir: cfg.ckpt.cache, Prediction: cfg.ckpt.prediction, TokenizerDir: cfg.ckpt.tokenizer, VAE: cfg.ckpt.vae,
		LoRAs: cfg.ckpt.loras, SkipUnknownLoRAKeys: cfg.ckpt.skipUnknown,
		LoRABranches: perRequest, ExtraTokens: perRequest, Logger: cfg.logger,
	})
	if err != nil {
		return "", nil, fmt.Errorf("sd: %w", err)
	}
	if !perRequest {
		return b.Dir, nil, nil
	}
	names := map[string]Component{"text_encoder": TextEncoder, "unet": UNet, "vae_decoder": VAEDecoder, "vae_encoder": VAEEncoder}
	rt, err := ckptrun.Open(ctx, b, ckptrun.Options{
		LoRADir: cfg.ckpt.loraDir, SkipUnknownLoRAKeys: cfg.ckpt.skipUnknown, EmbeddingsDir: cfg.ckpt.embeddings,
		ORT: func(c string) ort.Options { return ort.FromSession(cfg.sessionOptions(names[c])) },
	})
	if err != nil {
		return "", nil, fmt.Errorf("sd: %w", err)
	}
	if len(rt.Embeddings.Skipped) > 0 {
		cfg.logger.Warn("sd: embeddings skipped", "skipped", rt.Embeddings.Skipped)
	}
	return b.Dir, rt, nil
}

// resolveModel turns what Open was given into a model folder and the name
// images record: a folder as it is, a single-file checkpoint (or a folder
// holding one) built into the cache. With per-request LoRAs or embeddings
// it returns the started Model instead.
func resolveModel(ctx context.Context, dir string, cfg *config) (string, string, *Model, error) {
	path, isCkpt, err := checkpointPath(dir)
	if err != nil || !isCkpt {
		return dir, filepath.Base(filepath.Clean(dir)), nil, err
	}
	name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
	built, rt, err := openCheckpoint(ctx, path, &cfg.load)
	if err != nil || rt == nil {
		return built, name, nil, err
	}
	if cfg.load.perf.int8 != nil {
		return "", name, nil, errors.Join(int8Refused("a checkpoint with per-request LoRAs or embeddings runs its own components"), rt.Close())
	}
	if cfg.load.offload.TextEncoders {
		return "", name, nil, errors.Join(errors.New("sd: WithOffload: a checkpoint with per-request LoRAs or embeddings runs its own components, which are not offloaded"), rt.Close())
	}
	m, err := openRuntime(ctx, rt, name, cfg)
	if m != nil {
		// The folder's own models are not loaded (the runtime components
		// run it); the Folder still tells where it is and what it holds.
		m.f = &Folder{Dir: built, Scheduler: rt.Scheduler, ScalingFactor: rt.ScalingFactor}
		if t, ok := rt.Tokenizer.(*ckptrun.Tokenizer); ok {
			m.f.Tokenizer = t.CLIP
		}
	}
	return "", name, m, err
}

// openRuntime starts the engine on a checkpoint's runtime components.
func openRuntime(ctx context.Context, rt *ckptrun.Components, name string, cfg *config) (*Model, error) {
	f := &Folder{sampleSize: rt.ImageSize / 8}
	d := f.defaults(cfg.engine.defaults)
	c := rt.Components
	t, err := openTAESD(ctx, cfg, &c)
	if err != nil {
		return nil, errors.Join(err, rt.Close())
	}
	p, err := pipeline.New(c, cfg.engine.pipelineOptions(d, cfg.load.logger))
	if err != nil {
		return nil, errors.Join(err, t.Close(), rt.Close())
	}
	return &Model{p: p, rt: rt, name: name, defaults: d, mem: newMemoryModel(f, cfg.engine.memory, &cfg.load), taesd: t}, nil
}
