package sd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

// DefaultScalingFactor is the VAE scaling factor of Stable Diffusion 1.x and
// 2.x, used when the folder's VAE config does not give one.
const DefaultScalingFactor = 0.18215

// File names of the diffusers layout.
const (
	indexFile     = "model_index.json"
	schedulerFile = "scheduler/scheduler_config.json"
	modelFile     = "model.onnx"
	configFile    = "config.json"
	tokenizerDir  = "tokenizer"
)

// Folder is an opened model folder in the diffusers ONNX layout (the legacy
// diffusers exporter's or optimum's): every component loaded and checked
// against the others. Its models are safe for concurrent use; the caller must
// Close the Folder, and must not use its models after that.
type Folder struct {
	Dir           string            // the folder, as given to OpenFolder
	Index         ModelIndex        // model_index.json
	Tokenizer     *tokenizer.CLIP   // tokenizer/
	TextEncoder   *textenc.Model    // text_encoder/model.onnx
	UNet          *unet.Model       // unet/model.onnx
	VAEDecoder    *vae.Decoder      // vae_decoder/model.onnx
	VAEEncoder    *vae.Encoder      // vae_encoder/model.onnx; nil when absent or skipped (WithoutVAEEncoder)
	Scheduler     *scheduler.Config // scheduler/scheduler_config.json
	ScalingFactor float64           // scaling_factor of vae_decoder/config.json or vae/config.json, else DefaultScalingFactor
	Info          ModelInfo         // sdpipe.json, when the folder has one
	sampleSize    int               // unet/config.json's sample_size, or 0
	closeOnce     sync.Once
	closeErr      error
	load          loadState // load times, rewrites and warm-up (perf.go)
}

// OpenFolder opens the model folder dir. It first checks the folder without
// loading any weights: model_index.json, the scheduler and tokenizer files,
// each component's model.onnx and the external data files it references
// (weights.pb, model.onnx_data), any config.json, and that the components'
// dimensions fit together (text encoder hidden size and UNet cross-attention
// width, UNet and VAE latent channels, tokenizer and text encoder vocabulary
// and sequence length). Every problem found is reported, as *FolderError
// values joined together. Only then does it load the text encoder, UNet and
// VAE sessions, one after the other, each with its graph rewritten and
// verified first unless WithoutRewrites is given (see Rewrite); if one
// fails, those already loaded are closed.
// The VAE encoder is optional: a folder without vae_encoder/ opens with
// Folder.VAEEncoder nil, but a broken one is an error unless
// WithoutVAEEncoder is given.
//
// The options are checked first, all at once. A missing ONNX Runtime library
// gives an error matching ort.ErrLibraryNotFound, an unavailable device one
// wrapping *ort.ProviderError, a canceled ctx one matching ctx.Err(). The
// caller must Close the Folder. OpenFolder is safe for concurrent use.
func OpenFolder(ctx context.Context, dir string, opts ...LoadOption) (*Folder, error) {
	cfg, err := newLoadConfig(opts)
	if err != nil {
		return nil, err
	}
	if path, isCkpt, err := checkpointPath(dir); err != nil || isCkpt { // checkpoint.go
		if err != nil {
			return nil, err
		}
		plain := *cfg // per-request LoRAs and embeddings need Open
		plain.ckpt.loraDir, plain.ckpt.embeddings = "", ""
		if dir, _, err = openCheckpoint(ctx, path, &plain); err != nil {
			return nil, err
		}
	}
	return openFolder(ctx, dir, cfg)
}

func openFolder(ctx context.Context, dir string, cfg *loadConfig) (*Folder, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lay, err := inspect(dir, cfg)
	if err != nil {
		return nil, err
	}
	if _, _, err := ort.Version(cfg.libraryPath); err != nil {
		return nil, fmt.Errorf("sd: %w", err)
	}
	f := &Folder{
		Dir:           dir,
		Index:         lay.index,
		Tokenizer:     lay.tok,
		Scheduler:     lay.sched,
		ScalingFactor: lay.scaling,
		Info:          lay.info,
		sampleSize:    lay.sampleSize,
	}
	// one component at a time: loading them side by side left 0.3 GiB more
	// resident for SD 1.5 (4.76 against 4.48 GiB) to save 1.7 s of a
	// 9.3 s open (BENCHMARKS.md)
	load := func(c Component, open func(context.Context, string, ort.Options) error) error {
		o := cfg.ortOptions(c)
		start := time.Now()
		p := cfg.modelPath(ctx, f, c, lay, o) // rewritten unless told not to (perf.go)
		err := open(ctx, p, o)
		var pe *ort.ProviderError
		if err != nil && cfg.auto(c) && errors.As(err, &pe) {
			// an explicit "auto" choice falls back to the CPU, said aloud
			cfg.logger.Warn("sd: GPU unavailable, running on the CPU", "component", c.String(), "error", err)
			o.Provider, o.ProviderOptions = ort.CPU, nil
			err = open(ctx, p, o)
		}
		if err != nil {
			return openError(dir, c, o.Provider, err)
		}
		cfg.logger.Info("sd: loaded", "component", c.String(), "path", p,
			"device", string(o.Provider), "duration", time.Since(start))
		f.load.opened(c, time.Since(start))
		return nil
	}
	opens := map[Component]func(context.Context, string, ort.Options) error{
		TextEncoder: func(ctx context.Context, p string, o ort.Options) (err error) {
			f.TextEncoder, err = textenc.Open(ctx, p, o)
			return err
		},
		UNet: func(ctx context.Context, p string, o ort.Options) (err error) {
			f.UNet, err = unet.Open(ctx, p, o)
			return err
		},
		VAEDecoder: func(ctx context.Context, p string, o ort.Options) (err error) {
			f.VAEDecoder, err = vae.OpenDecoder(ctx, p, o)
			return err
		},
		VAEEncoder: func(ctx context.Context, p string, o ort.Options) (err error) {
			f.VAEEncoder, err = vae.OpenEncoder(ctx, p, o)
			return err
		},
	}
	for _, c := range []Component{TextEncoder, UNet, VAEDecoder, VAEEncoder} {
		if c == VAEEncoder && lay.io[VAEEncoder] == nil {
			continue
		}
		if err = load(c, opens[c]); err != nil {
			break
		}
	}
	if err != nil {
		return nil, errors.Join(err, f.closeModels())
	}
	if err := f.warm(ctx, cfg); err != nil { // WithWarmup (perf.go)
		return nil, errors.Join(err, f.closeModels())
	}
	return f, nil
}

// Close frees every model of the folder. It is idempotent: later calls
// return the first call's result. It must not be called while a model is in
// use.
func (f *Folder) Close() error {
	if f == nil {
		return nil
	}
	f.closeOnce.Do(func() { f.closeErr = f.closeModels() })
	return f.closeErr
}

func (f *Folder) closeModels() error {
	var errs []error
	if f.VAEEncoder != nil {
		errs = append(errs, f.VAEEncoder.Close())
	}
	if f.VAEDecoder != nil {
		errs = append(errs, f.VAEDecoder.Close())
	}
	if f.UNet != nil {
		errs = append(errs, f.UNet.Close())
	}
	if f.TextEncoder != nil {
		errs = append(errs, f.TextEncoder.Close())
	}
	return errors.Join(errs...)
}

// openError words an error from a component package's Open.
func openError(dir string, c Component, p ort.Provider, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("sd: loading %s: %w", c, err)
	}
	if errors.Is(err, ort.ErrLibraryNotFound) {
		return fmt.Errorf("sd: %w", err)
	}
	if _, ok := errors.AsType[*ort.ProviderError](err); ok {
		return fmt.Errorf("sd: %s on %s: %w", c, p, err)
	}
	file := c.String() + "/" + modelFile
	var reason string
	if e, ok := errors.AsType[*textenc.SignatureError](err); ok {
		reason = e.Reason
	} else if e, ok := errors.AsType[*unet.SignatureError](err); ok {
		reason = e.Reason
	} else if e, ok := errors.AsType[*vae.SignatureError](err); ok {
		reason = e.Reason
	}
	if reason != "" {
		return &FolderError{Dir: dir, File: file, Err: &problem{
			msg: fmt.Sprintf("not a %s model: %s", componentNoun(c), reason), err: err}}
	}
	return &FolderError{Dir: dir, File: file, Err: err}
}

func componentNoun(c Component) string {
	switch c {
	case TextEncoder:
		return "text encoder"
	case UNet:
		return "UNet"
	case VAEDecoder:
		return "VAE decoder"
	case VAEEncoder:
		return "VAE encoder"
	}
	return c.String()
}

// layout is what inspect learned about a folder without loading weights.
type layout struct {
	dir     string
	index   ModelIndex
	sched   *scheduler.Config
	tok     *tokenizer.CLIP
	scaling float64
	info    ModelInfo
	// sampleSize is the UNet's sample_size from unet/config.json, or 0
	sampleSize int
	io         [len(components)]*onnxpb.IO // nil for an absent or skipped component
}

func (l *layout) modelPath(c Component) string {
	return filepath.Join(l.dir, c.String(), modelFile)
}

// inspector collects the problems of one folder.
type inspector struct {
	dir  string
	cfg  *loadConfig
	errs []error
}

// fail records a problem with file (relative, slash-separated).
func (in *inspector) fail(file string, err error) {
	in.errs = append(in.errs, &FolderError{Dir: in.dir, File: file, Err: err})
}

func (in *inspector) path(file string) string {
	return filepath.Join(in.dir, filepath.FromSlash(file))
}

// inspect runs every check that needs no ONNX Runtime session.
func inspect(dir string, cfg *loadConfig) (*layout, error) {
	in := &inspector{dir: dir, cfg: cfg}
	lay := &layout{dir: dir}
	st, err := os.Stat(dir)
	if err != nil {
		return nil, &FolderError{Dir: dir, Err: fileError(err)}
	}
	if !st.IsDir() {
		return nil, &FolderError{Dir: dir, Err: errors.New("not a folder")}
	}
	if _, err := os.Stat(in.path(indexFile)); errors.Is(err, fs.ErrNotExist) {
		return nil, &FolderError{Dir: dir, File: indexFile, Err: &problem{
			msg: "missing: not a diffusers model folder (or not its top level)", err: err}}
	}
	lay.index = in.readIndex()
	lay.info = in.readInfo()
	lay.sched = in.readScheduler()
	in.checkTokenizer()
	for _, c := range components {
		lay.io[c] = in.readModel(c)
	}
	lay.scaling = in.readScaling()
	lay.sampleSize = in.readSampleSize()
	if len(in.errs) > 0 {
		return nil, errors.Join(in.errs...)
	}
	// The slower checks, once every file is known to be there.
	if lay.tok = in.loadTokenizer(); lay.tok != nil {
		in.crossCheck(lay)
	}
	if len(in.errs) > 0 {
		return nil, errors.Join(in.errs...)
	}
	return lay, nil
}

func (in *inspector) readIndex() ModelIndex {
	data, err := os.ReadFile(in.path(indexFile))
	if err != nil {
		in.fail(indexFile, fileError(err))
		return ModelIndex{}
	}
	idx, err := parseIndex(data)
	if err != nil {
		in.fail(indexFile, err)
		return ModelIndex{}
	}
	if _, ok := idx.Components["text_encoder_2"]; ok || strings.Contains(idx.ClassName, "XL") {
		in.fail(indexFile, &problem{
			msg: fmt.Sprintf("%s (with text_encoder_2) is Stable Diffusion XL, which is not supported", cmpOr(idx.ClassName, "the pipeline")),
			err: ErrUnsupported})
	}
	return idx
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkTokenizer checks the tokenizer folder's files without loading them.
func (in *inspector) checkTokenizer() {
	if st, err := os.Stat(in.path(tokenizerDir)); err != nil {
		in.fail(tokenizerDir, folderError(err))
		return
	} else if !st.IsDir() {
		in.fail(tokenizerDir, errors.New("not a folder"))
		return
	}
	for _, name := range []string{"vocab.json", "merges.txt"} {
		file := tokenizerDir + "/" + name
		if err := regularFile(in.path(file)); err != nil {
			in.fail(file, err)
		}
	}
	for _, name := range []string{"vocab.json", "tokenizer_config.json", "special_tokens_map.json"} {
		file := tokenizerDir + "/" + name
		if err := checkJSON(in.path(file)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			in.fail(file, err)
		}
	}
}

// loadTokenizer loads the tokenizer checkTokenizer found sound.
func (in *inspector) loadTokenizer() *tokenizer.CLIP {
	tok, err := tokenizer.Load(in.path(tokenizerDir))
	if err != nil {
		in.fail(tokenizerDir, err)
		return nil
	}
	return tok
}

// folderError words an error from os.Stat on a folder the layout requires.
func folderError(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return &problem{msg: "missing folder", err: err}
	}
	return fileError(err)
}

// regularFile checks that path is an existing regular file.
func regularFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return fileError(err)
	}
	if !st.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	return nil
}

// pytorchWeights are files of a PyTorch (not ONNX) diffusers component.
var pytorchWeights = []string{
	"diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
	"model.safetensors", "pytorch_model.bin",
}

// readModel checks component c's folder, model.onnx, external data and
// config.json, and returns the model's signature; nil when the component is
// optional and absent, skipped, or broken (the problem is recorded).
func (in *inspector) readModel(c Component) *onnxpb.IO {
	if c == VAEEncoder && in.cfg.skipVAEEncoder {
		return nil
	}
	folder := c.String()
	st, err := os.Stat(in.path(folder))
	switch {
	case err != nil && errors.Is(err, fs.ErrNotExist) && c == VAEEncoder:
		in.cfg.logger.Info("sd: no vae_encoder: image-to-image is unavailable", "dir", in.dir)
		return nil
	case err != nil:
		in.fail(folder, folderError(err))
		return nil
	case !st.IsDir():
		in.fail(folder, errors.New("not a folder"))
		return nil
	}
	file := folder + "/" + modelFile
	if err := regularFile(in.path(file)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			for _, w := range pytorchWeights {
				if _, e := os.Stat(in.path(folder + "/" + w)); e == nil {
					err = &problem{msg: fmt.Sprintf("missing (the folder holds PyTorch weights, %s: export the model to ONNX first)", w), err: err}
					break
				}
			}
		}
		in.fail(file, err)
		return nil
	}
	io, err := onnxpb.ReadIO(in.path(file))
	if err != nil {
		if de, ok := errors.AsType[*onnxpb.DecodeError](err); ok {
			err = &problem{msg: fmt.Sprintf("not a readable ONNX model: %s at byte %d", de.Msg, de.Offset), err: err}
		} else {
			err = fileError(err)
		}
		in.fail(file, err)
		return nil
	}
	ok := in.checkExternal(folder, file, io)
	if err := checkJSON(in.path(folder + "/" + configFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		in.fail(folder+"/"+configFile, err)
		ok = false
	}
	if !ok {
		return nil
	}
	return io
}

// checkExternal checks that every external data file the model references
// exists, lies in the component folder and is long enough.
func (in *inspector) checkExternal(folder, file string, io *onnxpb.IO) bool {
	ok := true
	for _, loc := range io.ExternalFiles() {
		if !filepath.IsLocal(loc) {
			in.fail(file, &problem{msg: fmt.Sprintf("external data %q lies outside the model's folder", loc), err: fs.ErrInvalid})
			ok = false
			continue
		}
		ext := path.Join(folder, filepath.ToSlash(loc))
		st, err := os.Stat(in.path(ext))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				err = &problem{msg: "missing (external data of " + file + ")", err: err}
			} else {
				err = fileError(err)
			}
			in.fail(ext, err)
			ok = false
			continue
		}
		var need int64
		for _, t := range io.Initializers {
			if t.Location != loc {
				continue
			}
			n := t.Length
			if n < 0 {
				n = t.NumBytes()
			}
			need = max(need, t.Offset+n)
		}
		if st.Size() < need {
			in.fail(ext, &problem{
				msg: fmt.Sprintf("truncated: %d bytes, %s needs %d", st.Size(), file, need),
				err: onnxpb.ErrTruncated})
			ok = false
		}
	}
	return ok
}

// readScaling reads the VAE scaling factor.
func (in *inspector) readScaling() float64 {
	for _, file := range []string{"vae_decoder/" + configFile, "vae/" + configFile} {
		var c struct {
			ScalingFactor *float64 `json:"scaling_factor"`
		}
		err := readJSON(in.path(file), &c)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			if file != "vae_decoder/"+configFile { // readModel reported that one
				in.fail(file, err)
			}
			return 0
		}
		if c.ScalingFactor == nil {
			continue
		}
		if f := *c.ScalingFactor; !(f > 0) || math.IsInf(f, 0) {
			in.fail(file, fmt.Errorf("scaling_factor is %v, want a positive number", f))
			return 0
		}
		return *c.ScalingFactor
	}
	return DefaultScalingFactor
}

// readSampleSize reads the UNet's latent sample_size from unet/config.json
// (optimum writes it; the legacy exporter does not), or returns 0.
func (in *inspector) readSampleSize() int {
	var c struct {
		SampleSize any `json:"sample_size"`
	}
	if err := readJSON(in.path("unet/"+configFile), &c); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			in.fail("unet/"+configFile, err)
		}
		return 0
	}
	switch v := c.SampleSize.(type) {
	case float64:
		if v >= 1 && v <= 512 && v == float64(int(v)) {
			return int(v)
		}
	case []any: // [height, width]: the default size is square, take the first
		if len(v) > 0 {
			if f, ok := v[0].(float64); ok && f >= 1 && f <= 512 {
				return int(f)
			}
		}
	}
	return 0
}
