package torchfile

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/internal/safetensors"
)

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
	// memoIndex reads the memo index of the PUT or GET opcode op: one byte
	// (BINPUT, BINGET), four little-endian ones (LONG_BINPUT, LONG_BINGET)
	// or a decimal line (PUT, GET).
	memoIndex := func(op byte) (int64, error) {
		switch op {
		case 'q', 'h':
			if need(1) {
				return int64(take(1)[0]), nil
			}
		case 'r', 'j':
			if need(4) {
				return int64(binary.LittleEndian.Uint32(take(4))), nil
			}
		default:
			s, ok := line()
			n, err := strconv.ParseInt(s, 10, 64)
			if ok && err == nil {
				return n, nil
			}
			_, err = fail("bad %s", memoOp(op))
			return 0, err
		}
		_, err := fail("truncated %s", memoOp(op))
		return 0, err
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
			idx := int64(len(memo)) // MEMOIZE
			if op != 0x94 {
				var err error
				if idx, err = memoIndex(op); err != nil {
					return nil, err
				}
			}
			memo[idx] = v
		case 'h', 'j', 'g': // BINGET, LONG_BINGET, GET
			idx, err := memoIndex(op)
			if err != nil {
				return nil, err
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

// memoOp names the PUT or GET opcode op, for errors.
func memoOp(op byte) string {
	switch op {
	case 'q':
		return "BINPUT"
	case 'r':
		return "LONG_BINPUT"
	case 'p':
		return "PUT"
	case 'h':
		return "BINGET"
	case 'j':
		return "LONG_BINGET"
	}
	return "GET"
}
