package sd

import (
	"errors"
	"path/filepath"
)

// ErrMismatch is matched (errors.Is) by a *FolderError whose components do
// not fit together: the text encoder's hidden size differs from the UNet's
// cross-attention width, the UNet's latent channels from the VAE's, the
// tokenizer's vocabulary is larger than the text encoder's embedding table,
// or the tokenizer's sequence length does not fit the text encoder's.
var ErrMismatch = errors.New("sd: components do not match")

// ErrUnsupported is matched (errors.Is) by a *FolderError for a model folder
// of a pipeline this package does not run, such as Stable Diffusion XL.
var ErrUnsupported = errors.New("sd: unsupported pipeline")

// FolderError reports a model folder that cannot be used: a missing,
// unreadable or malformed file, a model with the wrong inputs or outputs, or
// components that do not fit together. Its message names the file and the
// problem, e.g. "sd: models/tiny/unet/weights.pb: missing (external data of
// unet/model.onnx)".
//
// Err is the underlying error: it matches fs.ErrNotExist for a missing file,
// *json.SyntaxError for malformed JSON, *onnxpb.DecodeError for a truncated
// or garbage model, onnxpb.ErrTruncated for an external data file that is
// too short, scheduler.ErrConfig for a bad scheduler config, the component
// packages' *SignatureError (for example *unet.SignatureError) for a model
// with the wrong inputs or outputs, ErrMismatch and ErrUnsupported.
type FolderError struct {
	Dir  string // the model folder, as given to OpenFolder
	File string // the file or subfolder, relative to Dir and slash-separated ("unet/model.onnx"); "" for Dir itself
	Err  error
}

// Error returns "sd: <path>: <problem>".
func (e *FolderError) Error() string {
	p := e.Dir
	if e.File != "" {
		p = filepath.Join(e.Dir, filepath.FromSlash(e.File))
	}
	return "sd: " + p + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *FolderError) Unwrap() error { return e.Err }

// problem is an error with its own wording that still unwraps to the error it
// describes, so that messages do not repeat the path FolderError already
// gives while errors.Is and errors.As keep working.
type problem struct {
	msg string
	err error
}

func (p *problem) Error() string { return p.msg }
func (p *problem) Unwrap() error { return p.err }
