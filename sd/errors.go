package sd

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/pipeline"
)

// ErrLibraryNotFound is matched (errors.Is) by the error of Open and
// OpenFolder when no usable ONNX Runtime library is found (WithLibraryPath,
// $ONNXRUNTIME_SHARED_LIBRARY_PATH, the cache scripts/setup.sh fills, the
// system's). Its message names the paths tried.
var ErrLibraryNotFound = ort.ErrLibraryNotFound

// ErrTruncated and ErrMalformed are matched (errors.Is) by a *FolderError
// for a model file that ends in the middle of its data (or an external
// data file shorter than the model says), and for one that is not an ONNX
// model at all. The message says where (a byte offset, or the sizes).
var (
	ErrTruncated = onnxpb.ErrTruncated
	ErrMalformed = onnxpb.ErrMalformed
)

// DeviceError reports a component that could not be loaded on its device:
// the ONNX Runtime library has no such execution provider, the device is
// missing (for WebGPU: no Vulkan loader or driver), or it refused the
// model. Open returns it unless the device is Auto, which falls back to
// the CPU; with WithOffload, a request may return it for the text encoder
// it loads. Err says why.
type DeviceError struct {
	Component Component
	Device    Device
	Err       error
}

// Error returns "sd: <component> on <device>: <why>".
func (e *DeviceError) Error() string {
	return fmt.Sprintf("sd: %s on %s: %v", e.Component, e.Device, e.Err)
}

// Unwrap returns the underlying error.
func (e *DeviceError) Unwrap() error { return e.Err }

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
// *json.SyntaxError for malformed JSON, ErrTruncated for a truncated model
// or an external data file that is too short, ErrMalformed for a file that
// is not an ONNX model, scheduler.ErrConfig for a bad scheduler config, the
// component packages' *SignatureError (for example *unet.SignatureError)
// for a model with the wrong inputs or outputs, ErrMismatch and
// ErrUnsupported.
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

// ErrClosed is returned by Submit and Generate after Close, and matched by
// the error of a request that Close canceled.
var ErrClosed = errors.New("sd: model closed")

// ErrNaN is matched by the error of a request whose model output was not
// finite (NaN or infinite), the known failure of float16 VAE decoders on
// some latents.
var ErrNaN = errors.New("sd: model output is not finite")

// ErrInvalidRequest is matched (errors.Is) by every *RequestError.
var ErrInvalidRequest = errors.New("sd: invalid request")

// RequestError reports an invalid Request field. Submit and Generate
// return it before anything is queued.
type RequestError struct {
	Field  string // the Request field, e.g. "Width"
	Reason string
}

// Error returns "sd: invalid request: <field>: <reason>".
func (e *RequestError) Error() string {
	return fmt.Sprintf("sd: invalid request: %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidRequest) true for a RequestError.
func (e *RequestError) Is(target error) bool { return target == ErrInvalidRequest }

// engineError returns err, an error of the engine, in this package's
// terms: its sentinels and a *RequestError replace the engine's, and
// context errors stay as they are.
func engineError(err error) error {
	if re, ok := errors.AsType[*pipeline.RequestError](err); ok && error(re) == err {
		return &RequestError{Field: re.Field, Reason: re.Reason}
	}
	switch {
	case err == nil:
		return nil
	case err == pipeline.ErrClosed:
		return ErrClosed
	case err == context.Canceled || err == context.DeadlineExceeded:
		return err
	}
	return &wrapped{err}
}

// wrapped is an engine error that also matches this package's sentinels
// and error types.
type wrapped struct{ err error }

func (w *wrapped) Error() string { return w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

func (w *wrapped) Is(target error) bool {
	switch target {
	case ErrClosed:
		return errors.Is(w.err, pipeline.ErrClosed)
	case ErrNaN:
		return errors.Is(w.err, pipeline.ErrNaN)
	case ErrInvalidRequest:
		return errors.Is(w.err, pipeline.ErrInvalidRequest)
	}
	return false
}

func (w *wrapped) As(target any) bool {
	if t, ok := target.(**RequestError); ok {
		if re, ok := errors.AsType[*pipeline.RequestError](w.err); ok {
			*t = &RequestError{Field: re.Field, Reason: re.Reason}
			return true
		}
	}
	return false
}
