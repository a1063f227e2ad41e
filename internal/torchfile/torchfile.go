// Package torchfile lists the tensors of a PyTorch file written by
// torch.save (version 1.6 and later: a zip archive holding data.pkl and one
// stored, uncompressed entry per tensor storage), such as .ckpt checkpoints
// and .pt textual-inversion embeddings, without running any of it.
//
// Pickle is a program for Python's unpickler, which can call any Python
// function; loading an untrusted .ckpt with torch.load is how malware
// spreads. This package interprets pickle opcodes itself and calls nothing:
// it accepts only the globals a tensor file needs (torch's tensor and
// storage rebuilders, OrderedDict, and the inert classes and scalars of
// PyTorch Lightning's training state, as AUTOMATIC1111's safe unpickler
// does) and refuses any other with an error naming it. Every allocation is
// bounded by the pickle's length, and tensor byte ranges are checked
// against the archive entry that holds them.
//
// Read returns each tensor's position in the file, so that its bytes can
// be read or referenced in place, like a safetensors tensor's. All
// functions are safe for concurrent use.
package torchfile

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// MaxPickle bounds the size of data.pkl (the tensors themselves are not
// part of it), and MaxOps the opcodes it may run: a checkpoint's pickle
// holds a few tens of thousands. Each opcode adds at most one value, so
// they bound the unpickler's memory.
const (
	MaxPickle = 64 << 20
	MaxOps    = 4 << 20
)

// Error is returned for a file this package refuses or cannot read.
type Error struct{ Reason string }

func (e *Error) Error() string { return "torchfile: " + e.Reason }

func errorf(format string, args ...any) error { return &Error{Reason: fmt.Sprintf(format, args...)} }

// Read lists the tensors of the PyTorch zip archive read through r (size
// bytes), sorted by name. Nested dictionaries are flattened with "."
// between keys; a checkpoint's top-level "state_dict" is unwrapped, and a
// module's parameters (torch.nn ParameterDict) are listed under its key.
func Read(r io.ReaderAt, size int64) ([]safetensors.Info, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return nil, errorf("not a readable zip archive: %v", err)
	}
	var pkl *zip.File
	entries := map[string]*zip.File{}
	for _, f := range zr.File {
		entries[f.Name] = f
		dir, base := path.Split(f.Name)
		if base == "data.pkl" && strings.Count(dir, "/") == 1 {
			if pkl != nil {
				return nil, errorf("archive holds two data.pkl (%s and %s)", pkl.Name, f.Name)
			}
			pkl = f
		}
	}
	if pkl == nil {
		return nil, errorf("archive has no <name>/data.pkl: not a torch.save file")
	}
	if pkl.UncompressedSize64 > MaxPickle {
		return nil, errorf("data.pkl of %d bytes exceeds the %d-byte limit", pkl.UncompressedSize64, MaxPickle)
	}
	rc, err := pkl.Open()
	if err != nil {
		return nil, errorf("%s: %v", pkl.Name, err)
	}
	prog, err := io.ReadAll(io.LimitReader(rc, MaxPickle+1))
	rc.Close()
	if err != nil {
		return nil, errorf("%s: %v", pkl.Name, err)
	}
	root, err := unpickle(prog)
	if err != nil {
		return nil, err
	}
	if d, ok := root.(*dict); ok {
		if sd, ok := d.get("state_dict"); ok {
			if _, isDict := sd.(*dict); isDict {
				root = sd
			}
		}
	}
	found := map[string]*tensor{}
	flatten("", root, found, 0, map[any]bool{})
	prefix := strings.TrimSuffix(pkl.Name, "data.pkl")
	out := make([]safetensors.Info, 0, len(found))
	for name, t := range found {
		info, err := t.locate(prefix, entries)
		if err != nil {
			return nil, errorf("tensor %q: %v", name, err)
		}
		info.Name = name
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b safetensors.Info) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// persistent resolves torch's persistent id ('storage', storage type, key,
// location, numel).
func persistent(pid any) (*storage, error) {
	t, ok := pid.(tuple)
	if !ok || len(t) != 5 {
		return nil, fmt.Errorf("persistent id %v is not torch's storage tuple", pid)
	}
	kind, _ := t[0].(string)
	g, _ := t[1].(*global)
	key, _ := t[2].(string)
	numel, okN := t[4].(int64)
	if kind != "storage" || g == nil || key == "" || !okN || numel < 0 {
		return nil, fmt.Errorf("persistent id %v is not torch's storage tuple", pid)
	}
	dt, ok := storageTypes[g.name]
	if g.module != "torch" || !ok {
		return nil, fmt.Errorf("storage type %s.%s is not a torch storage", g.module, g.name)
	}
	if strings.ContainsAny(key, "/\\") || key == "." || key == ".." {
		return nil, fmt.Errorf("storage key %q is not a plain name", key)
	}
	return &storage{dtype: dt, key: key, numel: numel}, nil
}

func ints(v any) ([]int64, bool) {
	t, ok := v.(tuple)
	if !ok {
		if o, isObj := v.(*object); isObj { // torch.Size(tuple)
			t, ok = o.args.(tuple)
		}
	}
	if !ok {
		return nil, false
	}
	out := make([]int64, len(t))
	for i, x := range t {
		n, ok := x.(int64)
		if !ok || n < 0 {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// call applies an allowed global to its arguments. Only the tensor
// rebuilders compute anything; the rest become inert objects.
func call(g *global, args any) (any, error) {
	a, _ := args.(tuple)
	switch {
	case g.module == "torch._utils" && (g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_tensor"):
		if len(a) < 4 {
			return nil, fmt.Errorf("%s with %d arguments", g.name, len(a))
		}
		st, ok1 := a[0].(*storage)
		off, ok2 := a[1].(int64)
		size, ok3 := ints(a[2])
		stride, ok4 := ints(a[3])
		if !ok1 || !ok2 || !ok3 || !ok4 || off < 0 || len(size) != len(stride) {
			return nil, fmt.Errorf("%s with arguments it cannot rebuild a tensor from", g.name)
		}
		return &tensor{st: st, offset: off, size: size, stride: stride}, nil
	case g.module == "torch._utils" && (g.name == "_rebuild_parameter" || g.name == "_rebuild_parameter_with_state"):
		if len(a) < 1 {
			return nil, fmt.Errorf("%s without arguments", g.name)
		}
		if t, ok := a[0].(*tensor); ok {
			return t, nil
		}
		return nil, fmt.Errorf("%s of a %T", g.name, a[0])
	case g.module == "collections" && g.name == "OrderedDict":
		d := &dict{}
		if len(a) == 1 {
			if l, ok := a[0].(*list); ok {
				for _, it := range l.items {
					if kv, ok := it.(tuple); ok && len(kv) == 2 {
						d.set(kv[0], kv[1])
					}
				}
			}
		}
		return d, nil
	case g.module == "torch" && g.name == "Size":
		if len(a) == 1 {
			if t, ok := a[0].(tuple); ok {
				return t, nil
			}
		}
		return tuple{}, nil
	case (g.module == "copyreg" || g.module == "copy_reg") && g.name == "_reconstructor":
		if len(a) >= 1 {
			if cls, ok := a[0].(*global); ok {
				return &object{class: cls}, nil
			}
		}
		return nil, errors.New("copyreg._reconstructor without a class")
	}
	return &object{class: g, args: args}, nil
}

// flatten collects the tensors under v, naming them by their path of keys.
func flatten(prefix string, v any, out map[string]*tensor, depth int, seen map[any]bool) {
	if depth > 64 {
		return
	}
	join := func(k string) string {
		if prefix == "" {
			return k
		}
		return prefix + "." + k
	}
	switch x := v.(type) {
	case *tensor:
		if _, dup := out[prefix]; !dup && prefix != "" {
			out[prefix] = x
		}
	case *dict:
		if seen[x] {
			return
		}
		seen[x] = true
		for i, k := range x.keys {
			var name string
			switch k := k.(type) {
			case string:
				name = k
			case int64:
				name = strconv.FormatInt(k, 10)
			default:
				continue // class-valued keys (Lightning callbacks)
			}
			flatten(join(name), x.vals[i], out, depth+1, seen)
		}
	case *list:
		if seen[x] {
			return
		}
		seen[x] = true
		for i, it := range x.items {
			flatten(join(strconv.Itoa(i)), it, out, depth+1, seen)
		}
	case tuple:
		for i, it := range x {
			flatten(join(strconv.Itoa(i)), it, out, depth+1, seen)
		}
	case *object:
		if seen[x] {
			return
		}
		seen[x] = true
		if d, ok := x.state.(*dict); ok {
			if params, ok := d.get("_parameters"); ok { // a torch.nn.Module
				flatten(prefix, params, out, depth+1, seen)
				return
			}
		}
	}
}

// locate finds the tensor's bytes in the archive: its storage must be a
// stored (uncompressed) entry, the tensor contiguous and inside it.
func (t *tensor) locate(prefix string, entries map[string]*zip.File) (safetensors.Info, error) {
	f, ok := entries[prefix+"data/"+t.st.key]
	if !ok {
		return safetensors.Info{}, fmt.Errorf("storage %s has no entry %sdata/%s", t.st.key, prefix, t.st.key)
	}
	if f.Method != zip.Store {
		return safetensors.Info{}, fmt.Errorf("storage entry %s is compressed (method %d), not stored as torch.save writes it", f.Name, f.Method)
	}
	off, err := f.DataOffset()
	if err != nil {
		return safetensors.Info{}, fmt.Errorf("storage entry %s: %v", f.Name, err)
	}
	es := int64(t.st.dtype.Size())
	const limit = 1 << 62
	numel := int64(1)
	for _, d := range t.size {
		if d != 0 && numel > limit/d {
			return safetensors.Info{}, fmt.Errorf("shape %v is too large", t.size)
		}
		numel *= d
	}
	// Row-major contiguity (dimensions of size 1 may have any stride).
	want := int64(1)
	for i := len(t.size) - 1; i >= 0; i-- {
		if t.size[i] != 1 && t.stride[i] != want {
			return safetensors.Info{}, fmt.Errorf("not contiguous (size %v, stride %v): re-save the file with contiguous tensors or as safetensors", t.size, t.stride)
		}
		want *= t.size[i]
	}
	storageBytes := int64(f.UncompressedSize64)
	if t.st.numel > limit/es || t.st.numel*es > storageBytes {
		return safetensors.Info{}, fmt.Errorf("storage %s of %d elements does not fit its %d-byte entry", t.st.key, t.st.numel, storageBytes)
	}
	if t.offset > t.st.numel || numel > t.st.numel-t.offset {
		return safetensors.Info{}, fmt.Errorf("elements [%d, %d) lie outside storage %s of %d elements", t.offset, t.offset+numel, t.st.key, t.st.numel)
	}
	return safetensors.Info{DType: t.st.dtype, Shape: slices.Clone(t.size), Offset: off + t.offset*es, Size: numel * es}, nil
}
