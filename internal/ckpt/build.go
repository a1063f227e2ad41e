package ckpt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/modellib"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// buildVersion changes whenever Build writes different graphs for the same
// inputs, so that older cache entries are not reused.
const buildVersion = "ckpt-build-1"

// LoRASpec is a LoRA file to merge into the weights at build time, at a
// multiplier.
type LoRASpec struct {
	Path       string
	Multiplier float32
}

// BuildOptions configure Build. The zero value builds into
// <cache>/checkpoints with the family defaults.
type BuildOptions struct {
	// CacheDir is the folder that holds built models, one sub-folder per
	// checkpoint content and options; "" means <cachedir.Dir()>/checkpoints.
	CacheDir string
	// Config overrides the hyper-parameters the tensors cannot tell; nil
	// means the config files beside the checkpoint, if any (ReadConfigDir
	// of its folder), else the family defaults.
	Config *Config
	// Prediction, when set, overrides the prediction type ("epsilon" or
	// "v_prediction") whatever Config says.
	Prediction string
	// TokenizerDir holds the CLIP tokenizer's vocab.json and merges.txt;
	// "" means the checkpoint's folder's tokenizer/ sub-folder, then
	// <CacheDir>/../tokenizer (see FindTokenizer).
	TokenizerDir string
	// VAE is a separate VAE file that replaces the checkpoint's VAE.
	VAE string
	// LoRAs are merged into the weights (and are part of the cache key).
	LoRAs []LoRASpec
	// SkipUnknownLoRAKeys applies the LoRA keys that fit and skips the
	// rest (otherwise unknown keys are an error naming them).
	SkipUnknownLoRAKeys bool
	// ExtraTokens gives the text encoders input ExtraTokensInput: the
	// vectors of ids at and above the vocabulary size, fed per call
	// (textual-inversion embeddings).
	ExtraTokens bool
	// LoRABranches adds a LoRA branch to every Linear and Conv module of
	// the UNet and text encoders (see Branch), so that LoRAs can be applied
	// per call without rebuilding sessions.
	LoRABranches bool
	// Graph selects graph variants (FP16, HiddenStates …); its Source is
	// always the checkpoint's and its OnModule must be nil (LoRABranches
	// sets it).
	Graph modelgen.Options
	// Logger receives progress messages; nil discards them.
	Logger *slog.Logger
}

// Built is a checkpoint built into a diffusers ONNX folder.
type Built struct {
	Dir    string // the folder (legacy diffusers ONNX layout for SD 1.x/2.x)
	Key    string // the cache key
	Arch   *Arch
	Config modelgen.Config
	Cached bool          // found in the cache, nothing was built
	Took   time.Duration // time Build took
	// Copied tells that the checkpoint could not be hard-linked into the
	// cache (another file system) and was copied.
	Copied bool
	// Skipped lists LoRA keys skipped (SkipUnknownLoRAKeys).
	Skipped []string
	// Targets are the model's layers by kohya LoRA name (for LoRAs applied
	// per request).
	Targets Targets
}

// ModelConfig returns the modelgen configuration of architecture a.
func ModelConfig(a *Arch) (modelgen.Config, error) {
	text := func(t TextArch) modelgen.TextConfig {
		tc := t.TextConfig
		tc.EOSTokenID = 2 // what the checkpoints' text encoders use
		return tc
	}
	u := a.UNet
	c := modelgen.Config{Name: string(a.Family)}
	for _, t := range a.Text {
		if t.LayerNormEps != 1e-5 {
			return c, fmt.Errorf("ckpt: %s: layer norm epsilon %g not supported (1e-5)", t.Component, t.LayerNormEps)
		}
		switch t.Component {
		case TextEncoder:
			c.Text = text(t)
		case TextEncoder2:
			t2 := text(t)
			c.Text2 = &t2
		}
	}
	if a.Family == SDXLRefiner {
		return c, errors.New("ckpt: the SDXL refiner is detected but not built (no graph for a UNet conditioned on text_encoder_2 alone)")
	}
	layers := make([]int, len(u.BlockChannels))
	for i, d := range u.TransformerDepth {
		layers[i] = max(d, 1)
	}
	if layers[len(layers)-1] != u.MidDepth {
		if u.CrossAttention[len(layers)-1] || u.MidDepth != 1 {
			return c, fmt.Errorf("ckpt: a mid block of %d transformer blocks with %v per level is not supported", u.MidDepth, u.TransformerDepth)
		}
	}
	if u.TimeEmbedDim != 4*u.BlockChannels[0] {
		return c, fmt.Errorf("ckpt: time embedding of %d for %d channels is not supported (4×)", u.TimeEmbedDim, u.BlockChannels[0])
	}
	if a.VAE.InChannels != 3 || a.VAE.OutChannels != 3 {
		return c, fmt.Errorf("ckpt: a VAE of %d→%d image channels is not supported", a.VAE.InChannels, a.VAE.OutChannels)
	}
	c.UNet = modelgen.UNetConfig{
		BlockChannels: u.BlockChannels, CrossAttention: u.CrossAttention, LayersPerBlock: u.LayersPerBlock,
		LevelHeads: u.Heads, TransformerLayers: layers, LinearProjection: u.LinearProjection, UpcastAttention: u.UpcastAttention,
		CrossDim: u.CrossAttentionDim, InChannels: u.InChannels, OutChannels: u.OutChannels, SampleSize: a.ImageSize / 8,
	}
	if u.AdditionEmbedInputDim > 0 {
		c.UNet.AdditionEmbed, c.UNet.AdditionTimeEmbedDim, c.UNet.ProjectionInputDim = "text_time", u.AdditionTimeEmbedDim, u.AdditionEmbedInputDim
	}
	v := a.VAE
	c.VAE = modelgen.VAEConfig{BlockChannels: v.BlockChannels, LayersPerBlock: v.LayersPerBlock, LatentChannels: v.LatentChannels,
		ScalingFactor: v.ScalingFactor, ForceUpcast: v.ForceUpcast, SampleSize: a.ImageSize}
	c.Scheduler = modelgen.SchedulerConfig{Prediction: a.Prediction}
	switch a.Family {
	case SD2:
		c.Scheduler.Class = "DDIMScheduler"
	case SDXL:
		c.Scheduler.Class = "EulerDiscreteScheduler"
	}
	return c, nil
}

// Build builds the graphs of the checkpoint at path into a diffusers ONNX
// model folder in the cache and returns it, or returns the folder an
// earlier Build made for the same content and options. The graphs refer to
// the checkpoint's own bytes (a hard link to it in each component folder,
// or a copy when the cache is on another file system), so building copies
// no weights; the folder also gets the tokenizer, scheduler and configs of
// the architecture. Build is safe for concurrent use, across processes too:
// a folder is built under a temporary name and renamed into place.
func Build(ctx context.Context, path string, opt BuildOptions) (*Built, error) {
	start := time.Now()
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	conf := opt.Config
	if conf == nil {
		if conf, err = ReadConfigDir(filepath.Dir(path)); err != nil {
			return nil, err
		}
	}
	if opt.Prediction != "" {
		c := Config{}
		if conf != nil {
			c = *conf
		}
		c.Prediction = opt.Prediction
		conf = &c
	}
	a, err := Detect(f.Tensors, conf)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	m, err := Convert(f.Tensors, a)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, path)
	}
	var vaeFile *File
	var vaeMap *Mapping
	if opt.VAE != "" {
		if vaeFile, err = Open(opt.VAE); err != nil {
			return nil, err
		}
		defer vaeFile.Close()
		var va *VAEArch
		if va, vaeMap, err = ConvertVAE(vaeFile.Tensors); err != nil {
			return nil, fmt.Errorf("%w (%s)", err, opt.VAE)
		}
		if !slices.Equal(va.BlockChannels, a.VAE.BlockChannels) || va.LayersPerBlock != a.VAE.LayersPerBlock || va.LatentChannels != a.VAE.LatentChannels {
			return nil, fmt.Errorf("ckpt: VAE %s (channels %v, %d latent) does not fit the model's (channels %v, %d latent)", opt.VAE, va.BlockChannels, va.LatentChannels, a.VAE.BlockChannels, a.VAE.LatentChannels)
		}
	}
	cfg, err := ModelConfig(a)
	if err != nil {
		return nil, err
	}
	targets := m.LoRATargets()
	b := &Built{Arch: a, Config: cfg, Targets: targets}
	var applied []Applied
	for _, ls := range opt.LoRAs {
		l, err := LoadLoRA(ls.Path, targets, opt.SkipUnknownLoRAKeys)
		if err != nil {
			return nil, err
		}
		b.Skipped = append(b.Skipped, l.Skipped...)
		applied = append(applied, Applied{LoRA: l, Multiplier: ls.Multiplier})
	}
	tokDir, err := FindTokenizer(path, opt)
	if err != nil {
		return nil, err
	}

	root := opt.CacheDir
	if root == "" {
		root = filepath.Join(cachedir.Dir(), "checkpoints")
	}
	b.Key, err = buildKey(f, vaeFile, opt, a, tokDir)
	if err != nil {
		return nil, err
	}
	b.Dir = filepath.Join(root, b.Key)
	valid := func(dir string) error {
		_, err := os.Stat(filepath.Join(dir, doneFile))
		return err
	}
	if valid(b.Dir) == nil {
		b.Cached, b.Took = true, time.Since(start)
		log.Info("ckpt: using built model", "checkpoint", path, "dir", b.Dir)
		return b, nil
	}
	log.Info("ckpt: building graphs", "checkpoint", path, "family", a.Family, "dir", b.Dir)
	gopt := opt.Graph
	if opt.LoRABranches {
		gopt.OnModule = BranchHook(&Branches{})
	}
	built := false
	err = cachedir.Build(b.Dir, valid, func(tmp string) error {
		built = true
		var err error
		if b.Copied, err = writeFolder(ctx, tmp, f, m, vaeFile, vaeMap, Deltas(applied), cfg, a, tokDir, gopt, opt.ExtraTokens); err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(tmp, doneFile), []byte(path+"\n"), 0o644)
	})
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	b.Cached = !built // another process built it first
	if b.Copied {
		log.Warn("ckpt: the cache is on another file system than the checkpoint: its weights were copied (set SDPIPE_CACHE_DIR to a folder on the checkpoint's file system to avoid it)", "checkpoint", path)
	}
	b.Took = time.Since(start)
	log.Info("ckpt: built graphs", "checkpoint", path, "took", b.Took)
	return b, nil
}

// doneFile marks a completely built folder.
const doneFile = "sdpipe-checkpoint.txt"

// FindTokenizer returns the folder holding the CLIP tokenizer files
// (vocab.json and merges.txt) for the checkpoint at path: opt.TokenizerDir,
// else tokenizer/ beside the checkpoint, else <cache>/tokenizer. No
// tokenizer ships with the library (none is available from a package
// registry) and nothing is downloaded; the error says what to put where.
func FindTokenizer(path string, opt BuildOptions) (string, error) {
	var tried []string
	for _, d := range []string{opt.TokenizerDir, filepath.Join(filepath.Dir(path), "tokenizer"), filepath.Join(cachedir.Dir(), "tokenizer")} {
		if d == "" {
			continue
		}
		if hasTokenizer(d) {
			return d, nil
		}
		tried = append(tried, d)
		if d == opt.TokenizerDir {
			return "", fmt.Errorf("ckpt: tokenizer folder %s lacks vocab.json or merges.txt", d)
		}
	}
	return "", fmt.Errorf("ckpt: no CLIP tokenizer for %s: put vocab.json and merges.txt of openai/clip-vit-large-patch14 (the tokenizer/ folder of any Stable Diffusion diffusers model has them; SD 2.x and SDXL use the same files) in %s, or give their folder as an option (looked in %v)", path, filepath.Join(filepath.Dir(path), "tokenizer"), tried)
}

func hasTokenizer(d string) bool {
	for _, n := range []string{"vocab.json", "merges.txt"} {
		if st, err := os.Stat(filepath.Join(d, n)); err != nil || !st.Mode().IsRegular() {
			return false
		}
	}
	return true
}

// quickHash hashes a file cheaply: its size, modification time, the first
// 4 MiB (the safetensors header, or the zip's first entries), the last
// 1 MiB (a zip's directory) and 16 evenly spaced 64 KiB blocks.
func quickHash(f *File) ([]byte, error) {
	h := sha256.New()
	st, err := os.Stat(f.Path())
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	fmt.Fprintf(h, "%d %d\n", st.Size(), st.ModTime().UnixNano())
	size := f.Size()
	read := func(off, n int64) error {
		off = max(0, min(off, size))
		n = min(n, size-off)
		_, err := io.Copy(h, io.NewSectionReader(f, off, n))
		return err
	}
	if err := read(0, 4<<20); err != nil {
		return nil, fmt.Errorf("ckpt: hashing %s: %w", f.Path(), err)
	}
	if err := read(size-1<<20, 1<<20); err != nil {
		return nil, fmt.Errorf("ckpt: hashing %s: %w", f.Path(), err)
	}
	for i := int64(1); i <= 16; i++ {
		if err := read(size*i/17, 64<<10); err != nil {
			return nil, fmt.Errorf("ckpt: hashing %s: %w", f.Path(), err)
		}
	}
	return h.Sum(nil), nil
}

// buildKey is the cache key of a build: the checkpoint's (and separate
// VAE's) quick hash, the LoRAs' full SHA-256 and multipliers, the tokenizer
// files, the architecture and the graph options.
func buildKey(f, vae *File, opt BuildOptions, a *Arch, tokDir string) (string, error) {
	h := sha256.New()
	fmt.Fprintln(h, buildVersion)
	for _, x := range []*File{f, vae} {
		if x == nil {
			fmt.Fprintln(h, "-")
			continue
		}
		q, err := quickHash(x)
		if err != nil {
			return "", err
		}
		h.Write(q)
	}
	for _, l := range opt.LoRAs {
		s, err := modellib.FileSHA256(l.Path)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "lora %s %v\n", s, l.Multiplier)
	}
	for _, n := range []string{"vocab.json", "merges.txt"} {
		s, err := modellib.FileSHA256(filepath.Join(tokDir, n))
		if err != nil {
			return "", err
		}
		fmt.Fprintln(h, s)
	}
	js, _ := json.Marshal(a)
	h.Write(js)
	g := opt.Graph
	fmt.Fprintf(h, "%v %v %v %v %v %v %v %v %v %d %v branches=%v extra=%v\n", g.Layout, g.IDs, g.IDs2, g.HiddenStates, g.Timestep, g.TimestepShape, g.FP16, g.LatentParameters, g.ExternalFile, g.Batch, g.Attention, opt.LoRABranches, opt.ExtraTokens)
	if g.OnModule != nil {
		return "", errors.New("ckpt: Build sets the module hook itself (LoRABranches)")
	}
	return hex.EncodeToString(h.Sum(nil))[:32], nil
}

// linkInto makes file reachable from dir: a hard link, or a copy when dir
// is on another file system (copied reports it). Later components link to
// the first component's copy.
func linkInto(dir, file string, first string) (loc string, copied bool, err error) {
	// A hard link to a symbolic link would be a symbolic link, which ONNX
	// Runtime refuses to follow out of the folder: link the file itself.
	if file, err = filepath.EvalSymlinks(file); err != nil {
		return "", false, fmt.Errorf("ckpt: %w", err)
	}
	loc, err = onnxpb.LinkFile(dir, file)
	if err == nil {
		return loc, false, nil
	}
	if _, isLink := errors.AsType[*os.LinkError](err); !isLink {
		return "", false, err
	}
	if first != "" { // a copy already made inside the build folder
		loc, err = onnxpb.LinkFile(dir, first)
		return loc, true, err
	}
	loc = filepath.Base(file)
	if err := copyFile(filepath.Join(dir, loc), file); err != nil {
		return "", false, err
	}
	return loc, true, nil
}

func copyFile(dst, src string) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return fmt.Errorf("ckpt: %w", err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("ckpt: %w", cerr)
		}
	}()
	if _, err := io.Copy(out, in); err != nil {
		return fmt.Errorf("ckpt: copying %s: %w", src, err)
	}
	return nil
}

// Branches returns the LoRA branches of the built graph of component c
// (UNet, TextEncoder or TextEncoder2), read from its inputs; none when it
// was built without LoRABranches.
func (b *Built) Branches(c Component) (*Branches, error) {
	dir := string(c)
	if c == UNet {
		dir = modelgen.UNetDir
	}
	io, err := onnxpb.ReadIO(filepath.Join(b.Dir, dir, modelgen.ModelFile))
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	inputs := map[string][]int64{}
	for _, v := range io.Inputs {
		shape := make([]int64, len(v.Dims))
		for i, d := range v.Dims {
			shape[i] = d.Value
			if d.Param != "" || d.Value <= 0 {
				shape[i] = -1
			}
		}
		inputs[v.Name] = shape
	}
	return BranchesFromInputs(c, inputs)
}
