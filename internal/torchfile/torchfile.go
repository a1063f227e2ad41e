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
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
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

// Values the unpickler builds.
type (
	tuple  []any
	list   struct{ items []any }
	global struct{ module, name string }
	dict   struct {
		keys, vals []any
	}
	// object is an inert instance (copyreg._reconstructor, a Lightning
	// class, a numpy scalar): its class and state are kept, nothing runs.
	object struct {
		class *global
		args  any
		state any
	}
	storage struct {
		dtype safetensors.DType
		key   string
		numel int64
	}
	tensor struct {
		st           *storage
		offset       int64
		size, stride []int64
	}
)

func (d *dict) get(key string) (any, bool) {
	for i, k := range d.keys {
		if s, ok := k.(string); ok && s == key {
			return d.vals[i], true
		}
	}
	return nil, false
}

func (d *dict) set(k, v any) {
	if s, ok := k.(string); ok {
		for i, old := range d.keys {
			if o, ok := old.(string); ok && o == s {
				d.vals[i] = v
				return
			}
		}
	}
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
}

var storageTypes = map[string]safetensors.DType{
	"FloatStorage": safetensors.F32, "HalfStorage": safetensors.F16, "BFloat16Storage": safetensors.BF16,
	"DoubleStorage": safetensors.F64, "LongStorage": safetensors.I64, "IntStorage": safetensors.I32,
	"ShortStorage": safetensors.I16, "CharStorage": safetensors.I8, "ByteStorage": safetensors.U8,
	"BoolStorage": safetensors.Bool,
}

// allowed reports whether a pickle may name module.name.
func allowed(module, name string) bool {
	switch module {
	case "torch._utils":
		switch name {
		case "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state":
			return true
		}
	case "torch":
		if _, ok := storageTypes[name]; ok {
			return true
		}
		switch name {
		case "Size", "float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool":
			return true
		}
	case "collections":
		return name == "OrderedDict"
	case "copyreg", "copy_reg":
		return name == "_reconstructor"
	case "builtins", "__builtin__":
		return name == "object" || name == "set" || name == "frozenset"
	case "torch.nn.modules.container":
		return name == "ParameterDict"
	case "numpy.core.multiarray", "numpy._core.multiarray":
		return name == "scalar" || name == "_reconstruct"
	case "numpy":
		return name == "dtype" || name == "ndarray"
	case "_codecs":
		return name == "encode"
	}
	return strings.HasPrefix(module, "pytorch_lightning.callbacks") || strings.HasPrefix(module, "lightning.pytorch.callbacks")
}

// unpickle runs a pickle program in a restricted machine and returns its
// result.
func unpickle(p []byte) (any, error) {
	var (
		stack []any
		marks []int
		memo  = map[int64]any{}
		pos   int
	)
	fail := func(format string, args ...any) (any, error) {
		return nil, errorf("data.pkl at byte %d: %s", pos, fmt.Sprintf(format, args...))
	}
	need := func(n int) bool { return n >= 0 && pos+n <= len(p) }
	take := func(n int) []byte { b := p[pos : pos+n]; pos += n; return b }
	line := func() (string, bool) {
		i := slices.Index(p[pos:], '\n')
		if i < 0 {
			return "", false
		}
		s := string(p[pos : pos+i])
		pos += i + 1
		return s, true
	}
	pop := func() (any, bool) {
		if len(stack) == 0 || (len(marks) > 0 && len(stack) <= marks[len(marks)-1]) {
			return nil, false
		}
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		return v, true
	}
	popMark := func() ([]any, bool) {
		if len(marks) == 0 {
			return nil, false
		}
		m := marks[len(marks)-1]
		marks = marks[:len(marks)-1]
		items := slices.Clone(stack[m:])
		stack = stack[:m]
		return items, true
	}
	top := func() (any, bool) {
		if len(stack) == 0 || (len(marks) > 0 && len(stack) <= marks[len(marks)-1]) {
			return nil, false
		}
		return stack[len(stack)-1], true
	}
	for ops := 0; ; ops++ {
		if ops >= MaxOps {
			return fail("more than %d opcodes", MaxOps)
		}
		if !need(1) {
			return fail("program ends without STOP")
		}
		op := p[pos]
		pos++
		switch op {
		case 0x80: // PROTO
			if !need(1) {
				return fail("truncated PROTO")
			}
			if v := take(1)[0]; v > 5 {
				return fail("pickle protocol %d", v)
			}
		case 0x95: // FRAME
			if !need(8) {
				return fail("truncated FRAME")
			}
			take(8)
		case '.': // STOP
			v, ok := pop()
			if !ok {
				return fail("STOP with an empty stack")
			}
			return v, nil
		case '}':
			stack = append(stack, &dict{})
		case ']':
			stack = append(stack, &list{})
		case ')':
			stack = append(stack, tuple{})
		case 0x8f: // EMPTY_SET
			stack = append(stack, &list{})
		case '(':
			marks = append(marks, len(stack))
		case '0': // POP
			if _, ok := pop(); !ok {
				return fail("POP with an empty stack")
			}
		case '1': // POP_MARK
			if _, ok := popMark(); !ok {
				return fail("POP_MARK without MARK")
			}
		case '2': // DUP
			v, ok := top()
			if !ok {
				return fail("DUP with an empty stack")
			}
			stack = append(stack, v)
		case 'X', 0x8c, 0x8d, 'T', 'U', 'B', 'C', 0x8e, 0x96: // strings and bytes
			var n uint64
			switch op {
			case 'X', 'T', 'B':
				if !need(4) {
					return fail("truncated length")
				}
				n = uint64(binary.LittleEndian.Uint32(take(4)))
			case 0x8c, 'U', 'C':
				if !need(1) {
					return fail("truncated length")
				}
				n = uint64(take(1)[0])
			default:
				if !need(8) {
					return fail("truncated length")
				}
				n = binary.LittleEndian.Uint64(take(8))
			}
			if n > uint64(len(p)-pos) {
				return fail("string of %d bytes runs past the end", n)
			}
			b := take(int(n))
			if op == 'X' || op == 0x8c || op == 0x8d || op == 'T' || op == 'U' {
				stack = append(stack, string(b))
			} else {
				stack = append(stack, slices.Clone(b))
			}
		case 'q', 'r', 0x94, 'p': // BINPUT, LONG_BINPUT, MEMOIZE, PUT
			v, ok := top()
			if !ok {
				return fail("memo store with an empty stack")
			}
			var idx int64
			switch op {
			case 'q':
				if !need(1) {
					return fail("truncated BINPUT")
				}
				idx = int64(take(1)[0])
			case 'r':
				if !need(4) {
					return fail("truncated LONG_BINPUT")
				}
				idx = int64(binary.LittleEndian.Uint32(take(4)))
			case 0x94:
				idx = int64(len(memo))
			default:
				s, ok := line()
				n, err := strconv.ParseInt(s, 10, 64)
				if !ok || err != nil {
					return fail("bad PUT")
				}
				idx = n
			}
			memo[idx] = v
		case 'h', 'j', 'g': // BINGET, LONG_BINGET, GET
			var idx int64
			switch op {
			case 'h':
				if !need(1) {
					return fail("truncated BINGET")
				}
				idx = int64(take(1)[0])
			case 'j':
				if !need(4) {
					return fail("truncated LONG_BINGET")
				}
				idx = int64(binary.LittleEndian.Uint32(take(4)))
			default:
				s, ok := line()
				n, err := strconv.ParseInt(s, 10, 64)
				if !ok || err != nil {
					return fail("bad GET")
				}
				idx = n
			}
			v, ok := memo[idx]
			if !ok {
				return fail("memo %d was never stored", idx)
			}
			stack = append(stack, v)
		case 'J':
			if !need(4) {
				return fail("truncated BININT")
			}
			stack = append(stack, int64(int32(binary.LittleEndian.Uint32(take(4)))))
		case 'K':
			if !need(1) {
				return fail("truncated BININT1")
			}
			stack = append(stack, int64(take(1)[0]))
		case 'M':
			if !need(2) {
				return fail("truncated BININT2")
			}
			stack = append(stack, int64(binary.LittleEndian.Uint16(take(2))))
		case 0x8a, 0x8b: // LONG1, LONG4
			var n uint64
			if op == 0x8a {
				if !need(1) {
					return fail("truncated LONG1")
				}
				n = uint64(take(1)[0])
			} else {
				if !need(4) {
					return fail("truncated LONG4")
				}
				n = uint64(binary.LittleEndian.Uint32(take(4)))
			}
			if n > uint64(len(p)-pos) {
				return fail("integer of %d bytes runs past the end", n)
			}
			b := take(int(n))
			if n > 8 {
				stack = append(stack, &object{class: &global{"builtins", "int"}}) // too large to matter
				break
			}
			var v int64
			for i := len(b) - 1; i >= 0; i-- {
				v = v<<8 | int64(b[i])
			}
			if n > 0 && n < 8 && b[n-1]&0x80 != 0 {
				v -= 1 << (8 * n)
			}
			stack = append(stack, v)
		case 'I', 'L': // INT, LONG (text)
			s, ok := line()
			if !ok {
				return fail("truncated INT")
			}
			s = strings.TrimSuffix(s, "L")
			switch s {
			case "00":
				stack = append(stack, false)
			case "01":
				stack = append(stack, true)
			default:
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return fail("bad INT %q", s)
				}
				stack = append(stack, n)
			}
		case 'G':
			if !need(8) {
				return fail("truncated BINFLOAT")
			}
			stack = append(stack, math.Float64frombits(binary.BigEndian.Uint64(take(8))))
		case 'F':
			s, ok := line()
			f, err := strconv.ParseFloat(s, 64)
			if !ok || err != nil {
				return fail("bad FLOAT")
			}
			stack = append(stack, f)
		case 'N':
			stack = append(stack, nil)
		case 0x88:
			stack = append(stack, true)
		case 0x89:
			stack = append(stack, false)
		case 't':
			items, ok := popMark()
			if !ok {
				return fail("TUPLE without MARK")
			}
			stack = append(stack, tuple(items))
		case 0x85, 0x86, 0x87: // TUPLE1..3
			n := int(op - 0x84)
			t := make(tuple, n)
			for i := n - 1; i >= 0; i-- {
				v, ok := pop()
				if !ok {
					return fail("TUPLE%d with %d items", n, len(stack))
				}
				t[i] = v
			}
			stack = append(stack, t)
		case 'l':
			items, ok := popMark()
			if !ok {
				return fail("LIST without MARK")
			}
			stack = append(stack, &list{items: items})
		case 'a', 'e', 0x90: // APPEND, APPENDS, ADDITEMS
			var items []any
			if op == 'a' {
				v, ok := pop()
				if !ok {
					return fail("APPEND with an empty stack")
				}
				items = []any{v}
			} else {
				var ok bool
				if items, ok = popMark(); !ok {
					return fail("APPENDS without MARK")
				}
			}
			v, ok := top()
			if !ok {
				return fail("APPEND without a list")
			}
			switch l := v.(type) {
			case *list:
				l.items = append(l.items, items...)
			case *object: // e.g. a Lightning object built from a list
			default:
				return fail("APPEND to a %T", v)
			}
		case 'd':
			items, ok := popMark()
			if !ok || len(items)%2 != 0 {
				return fail("DICT without MARK or with an odd item count")
			}
			d := &dict{}
			for i := 0; i < len(items); i += 2 {
				d.set(items[i], items[i+1])
			}
			stack = append(stack, d)
		case 's', 'u': // SETITEM, SETITEMS
			var items []any
			if op == 's' {
				v, ok1 := pop()
				k, ok2 := pop()
				if !ok1 || !ok2 {
					return fail("SETITEM with too few items")
				}
				items = []any{k, v}
			} else {
				var ok bool
				if items, ok = popMark(); !ok || len(items)%2 != 0 {
					return fail("SETITEMS without MARK or with an odd item count")
				}
			}
			v, ok := top()
			if !ok {
				return fail("SETITEM without a dict")
			}
			switch d := v.(type) {
			case *dict:
				for i := 0; i < len(items); i += 2 {
					d.set(items[i], items[i+1])
				}
			case *object:
				if _, isDict := d.state.(*dict); !isDict {
					d.state = &dict{}
				}
				for i := 0; i < len(items); i += 2 {
					d.state.(*dict).set(items[i], items[i+1])
				}
			default:
				return fail("SETITEM on a %T", v)
			}
		case 0x91: // FROZENSET
			items, ok := popMark()
			if !ok {
				return fail("FROZENSET without MARK")
			}
			stack = append(stack, &list{items: items})
		case 'c', 0x93: // GLOBAL, STACK_GLOBAL
			var module, name string
			if op == 'c' {
				m, ok1 := line()
				n, ok2 := line()
				if !ok1 || !ok2 {
					return fail("truncated GLOBAL")
				}
				module, name = m, n
			} else {
				n, ok1 := pop()
				m, ok2 := pop()
				ms, ok3 := m.(string)
				ns, ok4 := n.(string)
				if !ok1 || !ok2 || !ok3 || !ok4 {
					return fail("STACK_GLOBAL without two strings")
				}
				module, name = ms, ns
			}
			if !allowed(module, name) {
				return nil, errorf("the pickle names the Python global %s.%s, which a tensor file has no need for: refusing the file (in Python it could run code); if you trust it, re-save it as safetensors", module, name)
			}
			stack = append(stack, &global{module, name})
		case 'R', 0x81, 0x92: // REDUCE, NEWOBJ, NEWOBJ_EX
			if op == 0x92 {
				if _, ok := pop(); !ok { // kwargs
					return fail("NEWOBJ_EX with too few items")
				}
			}
			args, ok1 := pop()
			fn, ok2 := pop()
			g, isGlobal := fn.(*global)
			if !ok1 || !ok2 || !isGlobal {
				return fail("call of a %T, not an allowed global", fn)
			}
			v, err := call(g, args)
			if err != nil {
				return nil, errorf("data.pkl at byte %d: %v", pos, err)
			}
			stack = append(stack, v)
		case 'b': // BUILD
			state, ok1 := pop()
			v, ok2 := top()
			if !ok1 || !ok2 {
				return fail("BUILD with too few items")
			}
			switch o := v.(type) {
			case *object:
				o.state = state
			case *tensor, *dict, *list: // e.g. a parameter's state, an OrderedDict's __dict__: ignored
			default:
				return fail("BUILD on a %T", v)
			}
		case 'Q': // BINPERSID
			pid, ok := pop()
			if !ok {
				return fail("BINPERSID with an empty stack")
			}
			st, err := persistent(pid)
			if err != nil {
				return nil, errorf("data.pkl at byte %d: %v", pos, err)
			}
			stack = append(stack, st)
		default:
			return fail("unsupported pickle opcode 0x%02x", op)
		}
	}
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
