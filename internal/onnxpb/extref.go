package onnxpb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ExternalRef returns a tensor of element type typ and shape dims whose
// data are the length bytes at offset in an existing file, location (a path
// relative to the folder of the model that will hold the tensor, with '/'
// separators). Marshal and WriteFile write it as ONNX external_data entries
// ("location", "offset", "length") with data_location EXTERNAL and never
// read or copy the bytes, so a graph can use weights where they already lie
// (e.g. inside a safetensors checkpoint).
//
// ONNX Runtime 1.29 refuses absolute locations, locations that leave the
// model's folder ("../x"), and symbolic links that resolve outside it; a
// hard link inside the folder (LinkFile), or a model loaded from bytes
// with its external-data folder set to the file's folder, works.
// length must be the tensor's size, NumElements·typ.Size().
func ExternalRef(name string, typ DataType, dims []int64, location string, offset, length int64) (*Tensor, error) {
	if typ.Size() == 0 {
		return nil, fmt.Errorf("onnxpb: external tensor %s: element type %v has no fixed size", name, typ)
	}
	for _, d := range dims {
		if d < 0 {
			return nil, fmt.Errorf("onnxpb: external tensor %s: negative dimension in %v", name, dims)
		}
	}
	t := &Tensor{Name: name, DataType: typ, Dims: append([]int64(nil), dims...), DataLocation: LocationExternal}
	if want := t.NumElements() * int64(typ.Size()); length != want {
		return nil, fmt.Errorf("onnxpb: external tensor %s: length %d bytes, but %v %v needs %d", name, length, typ, dims, want)
	}
	if offset < 0 {
		return nil, fmt.Errorf("onnxpb: external tensor %s: negative offset %d", name, offset)
	}
	if err := checkLocation(location); err != nil {
		return nil, fmt.Errorf("onnxpb: external tensor %s: %w", name, err)
	}
	t.ExternalData = []StringEntry{
		{Key: "location", Value: location},
		{Key: "offset", Value: strconv.FormatInt(offset, 10)},
		{Key: "length", Value: strconv.FormatInt(length, 10)},
	}
	return t, nil
}

// checkLocation reports whether an external data location is one ONNX
// Runtime accepts: relative, inside the model's folder.
func checkLocation(loc string) error {
	switch {
	case loc == "":
		return errors.New("empty external data location")
	case strings.HasPrefix(loc, "/") || filepath.IsAbs(loc):
		return fmt.Errorf("external data location %q is absolute (ONNX Runtime refuses absolute paths)", loc)
	case !filepath.IsLocal(filepath.FromSlash(loc)):
		return fmt.Errorf("external data location %q leaves the model's folder (ONNX Runtime refuses it)", loc)
	}
	return nil
}

// ExternalRange returns where an external tensor's data lie: its location,
// offset and length entries. ok is false when t is not external or an entry
// is missing or malformed (a missing offset means 0, as in ONNX).
func (t *Tensor) ExternalRange() (location string, offset, length int64, ok bool) {
	if t.DataLocation != LocationExternal {
		return "", 0, 0, false
	}
	location, ok = t.External("location")
	if !ok || location == "" {
		return "", 0, 0, false
	}
	if s, has := t.External("offset"); has {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil || v < 0 {
			return "", 0, 0, false
		}
		offset = v
	}
	s, has := t.External("length")
	if !has {
		return "", 0, 0, false
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return "", 0, 0, false
	}
	return location, offset, v, true
}

// checkExternalRefs checks the locations of g's external initializers.
func checkExternalRefs(g *Graph) error {
	for _, t := range g.Initializer {
		if t.DataLocation != LocationExternal {
			continue
		}
		loc, _ := t.External("location")
		if err := checkLocation(loc); err != nil {
			return fmt.Errorf("initializer %s: %w", t.Name, err)
		}
	}
	return nil
}

// LinkFile makes target (an existing file) reachable from dir as a hard
// link, so that a model written in dir can reference target's bytes with
// ExternalRef without copying them, and returns the link's location for
// ExternalRef. The link is named after target's base name, or base.1,
// base.2 … when that name holds another file; an existing link to the same
// file is reused. Hard links need dir and target on the same file system:
// otherwise the error wraps the *os.LinkError, and the caller may copy the
// file or load the model from bytes with its external-data folder set to
// target's folder. LinkFile is safe for concurrent use.
func LinkFile(dir, target string) (location string, err error) {
	st, err := os.Stat(target)
	if err != nil {
		return "", fmt.Errorf("onnxpb: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("onnxpb: %s is not a regular file", target)
	}
	base := filepath.Base(target)
	for i := 0; i < 100; i++ {
		name := base
		if i > 0 {
			name = base + "." + strconv.Itoa(i)
		}
		p := filepath.Join(dir, name)
		if have, err := os.Stat(p); err == nil {
			if os.SameFile(have, st) {
				return name, nil
			}
			continue
		}
		err := os.Link(target, p)
		if err == nil {
			return name, nil
		}
		if have, serr := os.Stat(p); serr == nil {
			if os.SameFile(have, st) { // another process linked it first
				return name, nil
			}
			continue
		}
		return "", fmt.Errorf("onnxpb: linking %s into %s: %w", target, dir, err)
	}
	return "", fmt.Errorf("onnxpb: linking %s into %s: 100 names taken", target, dir)
}
