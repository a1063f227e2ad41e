package sd

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/scheduler"
	"github.com/sdpipe/sdpipe/session"
	"github.com/sdpipe/sdpipe/textenc"
	"github.com/sdpipe/sdpipe/tokenizer"
	"github.com/sdpipe/sdpipe/unet"
	"github.com/sdpipe/sdpipe/vae"
)

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
	sigs       [len(components)]signature // nil for an absent or skipped component
	xl         *xlLayout                  // SDXL's second tokenizer and text encoder, or nil (xl.go)
	upcastVAE  bool                       // vae_decoder/config.json's force_upcast: a float16 decoder runs in float32
}

// signature is what the inspector needs of a component's signature (a
// *textenc.Signature, *unet.Signature, *vae.DecoderSignature or
// *vae.EncoderSignature), read once from its model file.
type signature interface {
	Path() string
	ExternalData() []session.ExternalFile
}

// readSignature reads and checks component c's model file.
func readSignature(c Component, path string) (signature, error) {
	switch c {
	case TextEncoder:
		return textenc.ReadSignature(path)
	case UNet:
		return unet.ReadSignature(path)
	case VAEDecoder:
		return vae.ReadDecoderSignature(path)
	}
	return vae.ReadEncoderSignature(path)
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
		lay.sigs[c] = in.readModel(c)
	}
	in.readXL(lay) // text_encoder_2 and tokenizer_2 of SDXL (xl.go)
	lay.scaling = in.readScaling()
	lay.upcastVAE = in.readForceUpcast() // xl.go
	lay.sampleSize = in.readSampleSize()
	if len(in.errs) > 0 {
		return nil, errors.Join(in.errs...)
	}
	// The slower checks, once every file is known to be there.
	if lay.tok = in.loadTokenizer(); lay.tok != nil {
		in.crossCheck(lay)
		in.checkXL(lay) // xl.go
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
	in.checkXLIndex(idx) // xl.go
	return idx
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// checkTokenizer checks the tokenizer folder's files without loading them.
func (in *inspector) checkTokenizer() { in.checkTokenizerAt(tokenizerDir) }

// checkTokenizerAt checks the tokenizer folder tokenizerDir.
func (in *inspector) checkTokenizerAt(tokenizerDir string) {
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
func (in *inspector) readModel(c Component) signature {
	if c == VAEEncoder && in.cfg.skipVAEEncoder {
		return nil
	}
	return in.readModelAt(c, c.String())
}

// readModelAt is readModel for a component of kind c in folder (SDXL's
// text_encoder_2 is a TextEncoder in another folder).
func (in *inspector) readModelAt(c Component, folder string) signature {
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
	sig, err := readSignature(c, in.path(file))
	if err != nil {
		if de, ok := errors.AsType[*onnxpb.DecodeError](err); ok {
			err = &problem{msg: fmt.Sprintf("not a readable ONNX model: %s at byte %d", de.Msg, de.Offset), err: err}
		} else if se, ok := errors.AsType[*session.SignatureError](err); ok {
			err = &problem{msg: fmt.Sprintf("not a %s model: %s", componentNoun(c), se.Reason), err: err}
		} else {
			err = fileError(err)
		}
		in.fail(file, err)
		return nil
	}
	ok := in.checkExternal(folder, file, sig.ExternalData())
	if err := checkJSON(in.path(folder + "/" + configFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		in.fail(folder+"/"+configFile, err)
		ok = false
	}
	if !ok {
		return nil
	}
	return sig
}

// checkExternal checks that every external data file the model references
// exists, lies in the component folder and is long enough.
func (in *inspector) checkExternal(folder, file string, exts []session.ExternalFile) bool {
	ok := true
	for _, e := range exts {
		loc := e.Name
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
		if need := e.Size; st.Size() < need {
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
