package ort

import (
	"cmp"
	"context"
	"fmt"
	"time"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/session"
)

// FromSession returns the options of a session that the public
// session.Options describe.
func FromSession(o session.Options) Options {
	return Options{
		LibraryPath:       o.LibraryPath,
		Provider:          Provider(o.Device),
		ProviderOptions:   o.ProviderOptions,
		IntraOpThreads:    o.Threads,
		DisableMemPattern: o.DisableMemoryPattern,
		DisableMemArena:   o.DisableMemoryArena,
		NoSpinning:        o.DisableSpinning,
	}
}

// IOOf returns the inputs and outputs a model file declares, from its
// signature as onnxpb read it (ReadIO without reading the file again).
func IOOf(m *onnxpb.IO) (ins, outs []IOInfo, err error) {
	for _, v := range m.Inputs {
		ins = append(ins, fromValueInfo(v))
	}
	for _, v := range m.Outputs {
		outs = append(outs, fromValueInfo(v))
	}
	if len(ins) == 0 || len(outs) == 0 {
		return nil, nil, fmt.Errorf("ort: model declares no inputs or no outputs")
	}
	return ins, outs, nil
}

// Repeat calls run until two consecutive calls take times within steady
// of each other (relative), at most maxCalls times, and returns each
// call's duration: the warm-up of a session, whose first calls are slow.
// Zero maxCalls means 4, zero steady 0.1.
func Repeat(ctx context.Context, run func(context.Context) error, maxCalls int, steady float64) ([]time.Duration, error) {
	maxCalls, steady = cmp.Or(maxCalls, 4), cmp.Or(steady, 0.1)
	var times []time.Duration
	for i := range maxCalls {
		t0 := time.Now()
		if err := run(ctx); err != nil {
			return times, err
		}
		times = append(times, time.Since(t0))
		if i > 0 {
			a, b := times[i-1].Seconds(), times[i].Seconds()
			if d := (a - b) / b; d < steady && d > -steady {
				break
			}
		}
	}
	return times, ctx.Err()
}

// ExternalData lists the external data files a model reads, for the
// component packages' signatures.
func ExternalData(m *onnxpb.IO) []session.ExternalFile {
	var out []session.ExternalFile
	for _, e := range m.ExternalNeeds() {
		out = append(out, session.ExternalFile{Name: e.Location, Size: e.Need})
	}
	return out
}

// Session returns the public session.Options that o's settings map to
// (FromSession's inverse; the settings session.Options lacks are dropped),
// for internal callers that open a component package's model with their
// own Options.
func (o Options) Session() session.Options {
	return session.Options{
		LibraryPath:          o.LibraryPath,
		Device:               session.Device(o.Provider),
		ProviderOptions:      o.ProviderOptions,
		Threads:              o.IntraOpThreads,
		DisableMemoryPattern: o.DisableMemPattern,
		DisableMemoryArena:   o.DisableMemArena,
		DisableSpinning:      o.NoSpinning,
	}
}

// ReadModel reads the model file at path for a component package
// (component is its name, "textenc", "unet" or "vae", which prefixes the
// errors): the file's signature as onnxpb reads it, and the inputs and
// outputs it declares.
func ReadModel(component, path string) (io *onnxpb.IO, ins, outs []IOInfo, err error) {
	if io, err = onnxpb.ReadIO(path); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %w", component, err)
	}
	if ins, outs, err = IOOf(io); err != nil {
		return nil, nil, nil, fmt.Errorf("%s: %s: %w", component, path, err)
	}
	return io, ins, outs, nil
}

// Bad returns the constructor of the *session.SignatureError that the
// component package component gives for its model file at path, whose
// Reason format and args word.
func Bad(component, path string) func(format string, args ...any) error {
	return func(format string, args ...any) error {
		return &session.SignatureError{Component: component, Path: path, Reason: fmt.Sprintf(format, args...)}
	}
}

// OpenFile is a component package's Open of the model file at path: it
// reads and checks the file's signature with read, then loads the model
// with the signature's Open.
func OpenFile[S interface {
	Open(context.Context, session.Options) (M, error)
}, M any](ctx context.Context, path string, o session.Options, read func(string) (S, error)) (M, error) {
	s, err := read(path)
	if err != nil {
		var zero M
		return zero, err
	}
	return s.Open(ctx, o)
}
