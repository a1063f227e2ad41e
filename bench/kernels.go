package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// KernelResult is the speed of one ONNX Runtime kernel on one shape,
// measured in the same process and rounds as the others (KernelLimits).
type KernelResult struct {
	Name    string  `json:"name"`   // e.g. "MatMulInteger u8×s8 (constant weights)"
	Family  string  `json:"family"` // MatMul or Conv
	FP32    bool    `json:"fp32"`   // the family's float32 reference
	Op      string  `json:"op"`     // what the graph computes
	Shape   string  `json:"shape"`  // M×K×N, or the convolution's shape
	GMAC    float64 `json:"gmac"`
	BestS   float64 `json:"best_s"`
	MedianS float64 `json:"median_s"`
	GOPS    float64 `json:"gops"` // 2·MAC over the best run, in 10⁹ a second
	// VsFP32 is GOPS over the fp32 kernel of the same family (MatMul or
	// Conv) in the same run.
	VsFP32 float64 `json:"vs_fp32"`
}

// kernel is one graph KernelLimits times.
type kernel struct {
	name, op, family, shape string
	macs                    float64
	fp32                    bool // the family's fp32 reference
	build                   func(b *modelgen.Builder) (inputs [][]int64)
}

// int8Tensor adds an int8 (or uint8 when unsigned) initializer of the given
// shape with deterministic values spread over most of the type's range.
func int8Tensor(b *modelgen.Builder, name string, unsigned bool, shape ...int64) string {
	t := &onnxpb.Tensor{Name: name, Dims: shape, DataType: onnxpb.Int8}
	if unsigned {
		t.DataType = onnxpb.Uint8
	}
	n := t.NumElements()
	t.RawData = make([]byte, n)
	for i := range t.RawData {
		v := int((uint32(i)*2654435761)>>24) - 128 // −128…127
		if unsigned {
			v += 128
		}
		t.RawData[i] = byte(v)
	}
	b.Graph().Initializer = append(b.Graph().Initializer, t)
	return name
}

// zeroPoint adds a scalar (or a vector of n) zero point of the given type.
func zeroPoint(b *modelgen.Builder, name string, unsigned bool, v byte, n int) string {
	t := &onnxpb.Tensor{Name: name, DataType: onnxpb.Int8, RawData: bytesOf(v, n)}
	if unsigned {
		t.DataType = onnxpb.Uint8
	}
	if n > 0 {
		t.Dims = []int64{int64(n)}
	}
	b.Graph().Initializer = append(b.Graph().Initializer, t)
	return name
}

func bytesOf(v byte, n int) []byte {
	b := make([]byte, max(n, 1))
	for i := range b {
		b[i] = v
	}
	return b
}

// floatVec adds a float32 initializer of n copies of v (a scalar when n is 0).
func floatVec(b *modelgen.Builder, name string, v float32, n int) string {
	t := &onnxpb.Tensor{Name: name, DataType: onnxpb.Float}
	if n > 0 {
		t.Dims = []int64{int64(n)}
	}
	for range max(n, 1) {
		t.RawData = binary.LittleEndian.AppendUint32(t.RawData, math.Float32bits(v))
	}
	b.Graph().Initializer = append(b.Graph().Initializer, t)
	return name
}

func castTo(b *modelgen.Builder, x string, to onnxpb.DataType) string {
	return b.Op("Cast", []string{x}, modelgen.AttrInt("to", int64(to)))
}

// kernels lists the measured graphs: a MatMul of m×k×n and a 3×3
// convolution of c channels at h×h, batch 2, in fp32 and in the int8
// forms ONNX Runtime offers. Integer inputs come from a Cast of a float
// input, whose cost (one pass over the activations) is part of the time,
// as quantizing the activations is in a quantized graph.
func kernels(m, k, n, c, h int) []kernel {
	mm := fmt.Sprintf("%d×%d×%d", m, k, n)
	mmMACs := float64(m) * float64(k) * float64(n)
	cv := fmt.Sprintf("3×3 %d→%d at %d×%d, batch 2", c, c, h, h)
	cvMACs := 2 * float64(h*h) * float64(c) * float64(c) * 9
	matInt := func(au, bu, constB bool) func(b *modelgen.Builder) [][]int64 {
		return func(b *modelgen.Builder) [][]int64 {
			at, bt := onnxpb.Int8, onnxpb.Int8
			if au {
				at = onnxpb.Uint8
			}
			if bu {
				bt = onnxpb.Uint8
			}
			a := castTo(b, b.Input("a", onnxpb.Float, m, k), at)
			var w string
			ins := [][]int64{{int64(m), int64(k)}}
			if constB {
				w = int8Tensor(b, "w", bu, int64(k), int64(n))
			} else {
				w = castTo(b, b.Input("w", onnxpb.Float, k, n), bt)
				ins = append(ins, []int64{int64(k), int64(n)})
			}
			y := b.Op("MatMulInteger", []string{a, w, zeroPoint(b, "azp", au, 3, 0), zeroPoint(b, "bzp", bu, 0, n)})
			b.Output(castTo(b, y, onnxpb.Float), "y", onnxpb.Float, m, n)
			return ins
		}
	}
	return []kernel{
		{name: "MatMul fp32", op: "MatMul", family: "MatMul", shape: mm, macs: mmMACs, fp32: true,
			build: func(b *modelgen.Builder) [][]int64 {
				a := b.Input("a", onnxpb.Float, m, k)
				w := b.Param("w", []int64{int64(k), int64(n)}, modelgen.Init{Std: 0.02})
				b.Output(b.Op("MatMul", []string{a, w}), "y", onnxpb.Float, m, n)
				return [][]int64{{int64(m), int64(k)}}
			}},
		{name: "MatMulInteger u8×s8, constant weights", op: "Cast→MatMulInteger→Cast", family: "MatMul", shape: mm, macs: mmMACs, build: matInt(true, false, true)},
		{name: "MatMulInteger u8×s8, weights an input", op: "Cast→MatMulInteger→Cast", family: "MatMul", shape: mm, macs: mmMACs, build: matInt(true, false, false)},
		{name: "MatMulInteger u8×u8, constant weights", op: "Cast→MatMulInteger→Cast", family: "MatMul", shape: mm, macs: mmMACs, build: matInt(true, true, true)},
		{name: "MatMulInteger s8×s8, constant weights", op: "Cast→MatMulInteger→Cast", family: "MatMul", shape: mm, macs: mmMACs, build: matInt(false, false, true)},
		{name: "DynamicQuantizeMatMul (fp32 in, s8 weights per column)", op: "com.microsoft.DynamicQuantizeMatMul", family: "MatMul", shape: mm, macs: mmMACs,
			build: func(b *modelgen.Builder) [][]int64 {
				a := b.Input("a", onnxpb.Float, m, k)
				w := int8Tensor(b, "w", false, int64(k), int64(n))
				y := b.Graph()
				out := "y"
				y.Nodes = append(y.Nodes, &onnxpb.Node{Name: "dqmm", OpType: "DynamicQuantizeMatMul", Domain: "com.microsoft",
					Input: []string{a, w, floatVec(b, "ws", 0.01, n), zeroPoint(b, "wzp", false, 0, n)}, Output: []string{out}})
				y.Output = append(y.Output, onnxpb.ValueInfo{Name: out, ElemType: onnxpb.Float, Dims: []onnxpb.Dim{{Value: int64(m)}, {Value: int64(n)}}})
				return [][]int64{{int64(m), int64(k)}}
			}},
		{name: "DynamicQuantizeLinear→MatMulInteger u8×s8→Cast→Mul (ORT's dynamic quantization)", op: "DQL→MatMulInteger→Cast→Mul·Mul", family: "MatMul", shape: mm, macs: mmMACs,
			build: func(b *modelgen.Builder) [][]int64 {
				a := b.Input("a", onnxpb.Float, m, k)
				q := b.OpN("DynamicQuantizeLinear", []string{a}, 3)
				w := int8Tensor(b, "w", false, int64(k), int64(n))
				y := b.Op("MatMulInteger", []string{q[0], w, q[2], zeroPoint(b, "wzp", false, 0, n)})
				s := b.Op("Mul", []string{q[1], floatVec(b, "ws", 0.01, n)})
				b.Output(b.Op("Mul", []string{castTo(b, y, onnxpb.Float), s}), "y", onnxpb.Float, m, n)
				return [][]int64{{int64(m), int64(k)}}
			}},
		{name: "QLinearMatMul u8×s8", op: "QuantizeLinear→QLinearMatMul→DequantizeLinear", family: "MatMul", shape: mm, macs: mmMACs,
			build: func(b *modelgen.Builder) [][]int64 {
				a := b.Input("a", onnxpb.Float, m, k)
				as, az := floatVec(b, "as", 0.02, 0), zeroPoint(b, "az", true, 128, 0)
				qa := b.Op("QuantizeLinear", []string{a, as, az})
				w := int8Tensor(b, "w", false, int64(k), int64(n))
				ys, yz := floatVec(b, "ys", 0.5, 0), zeroPoint(b, "yz", true, 128, 0)
				y := b.Op("QLinearMatMul", []string{qa, as, az, w, floatVec(b, "ws", 0.01, 0), zeroPoint(b, "wz", false, 0, 0), ys, yz})
				b.Output(b.Op("DequantizeLinear", []string{y, ys, yz}), "y", onnxpb.Float, m, n)
				return [][]int64{{int64(m), int64(k)}}
			}},
		{name: "Conv fp32", op: "Conv", family: "Conv", shape: cv, macs: cvMACs, fp32: true,
			build: func(b *modelgen.Builder) [][]int64 {
				x := b.Input("x", onnxpb.Float, 2, c, h, h)
				w := b.Param("w", []int64{int64(c), int64(c), 3, 3}, modelgen.Init{Std: 0.02})
				bias := b.Param("b", []int64{int64(c)}, modelgen.Init{Std: 0.02})
				b.Output(b.Op("Conv", []string{x, w, bias}, modelgen.AttrInts("pads", 1, 1, 1, 1)), "y", onnxpb.Float, 2, c, h, h)
				return [][]int64{{2, int64(c), int64(h), int64(h)}}
			}},
		{name: "QLinearConv u8×s8, weights per channel", op: "QuantizeLinear→QLinearConv→DequantizeLinear", family: "Conv", shape: cv, macs: cvMACs, build: qconv(c, h, false)},
		{name: "DynamicQuantizeLinear→QLinearConv u8×s8 (input scale computed in the call)", op: "DynamicQuantizeLinear→QLinearConv→DequantizeLinear", family: "Conv", shape: cv, macs: cvMACs, build: qconvDyn(c, h)},
		{name: "QLinearConv u8×u8, weights per channel", op: "QuantizeLinear→QLinearConv→DequantizeLinear", family: "Conv", shape: cv, macs: cvMACs, build: qconv(c, h, true)},
		{name: "ConvInteger u8×s8", op: "DynamicQuantizeLinear→ConvInteger→Cast", family: "Conv", shape: cv, macs: cvMACs, build: convInt(c, h, false)},
		{name: "DynamicQuantizeLinear→ConvInteger u8×u8→Cast→Mul→Add (dequantized, with bias)", op: "DQL→ConvInteger→Cast→Mul→Add", family: "Conv", shape: cv, macs: cvMACs, build: convIntFull(c, h)},
		{name: "ConvInteger u8×u8", op: "DynamicQuantizeLinear→ConvInteger→Cast", family: "Conv", shape: cv, macs: cvMACs, build: convInt(c, h, true)},
	}
}

func qconv(c, h int, wu bool) func(b *modelgen.Builder) [][]int64 {
	return func(b *modelgen.Builder) [][]int64 {
		x := b.Input("x", onnxpb.Float, 2, c, h, h)
		xs, xz := floatVec(b, "xs", 0.02, 0), zeroPoint(b, "xz", true, 128, 0)
		qx := b.Op("QuantizeLinear", []string{x, xs, xz})
		w := int8Tensor(b, "w", wu, int64(c), int64(c), 3, 3)
		wz := byte(0)
		if wu {
			wz = 128
		}
		ys, yz := floatVec(b, "ys", 0.5, 0), zeroPoint(b, "yz", true, 128, 0)
		bias := &onnxpb.Tensor{Name: "bias", DataType: onnxpb.Int32, Dims: []int64{int64(c)}, Int32Data: make([]int32, c)}
		b.Graph().Initializer = append(b.Graph().Initializer, bias)
		y := b.Op("QLinearConv", []string{qx, xs, xz, w, floatVec(b, "ws", 0.01, c), zeroPoint(b, "wz", wu, wz, c), ys, yz, "bias"},
			modelgen.AttrInts("pads", 1, 1, 1, 1))
		b.Output(b.Op("DequantizeLinear", []string{y, ys, yz}), "y", onnxpb.Float, 2, c, h, h)
		return [][]int64{{2, int64(c), int64(h), int64(h)}}
	}
}

func qconvDyn(c, h int) func(b *modelgen.Builder) [][]int64 {
	return func(b *modelgen.Builder) [][]int64 {
		x := b.Input("x", onnxpb.Float, 2, c, h, h)
		q := b.OpN("DynamicQuantizeLinear", []string{x}, 3)
		w := int8Tensor(b, "w", false, int64(c), int64(c), 3, 3)
		ys, yz := floatVec(b, "ys", 0.5, 0), zeroPoint(b, "yz", true, 128, 0)
		bias := &onnxpb.Tensor{Name: "bias", DataType: onnxpb.Int32, Dims: []int64{int64(c)}, Int32Data: make([]int32, c)}
		b.Graph().Initializer = append(b.Graph().Initializer, bias)
		y := b.Op("QLinearConv", []string{q[0], q[1], q[2], w, floatVec(b, "ws", 0.01, c), zeroPoint(b, "wz", false, 0, c), ys, yz, "bias"},
			modelgen.AttrInts("pads", 1, 1, 1, 1))
		b.Output(b.Op("DequantizeLinear", []string{y, ys, yz}), "y", onnxpb.Float, 2, c, h, h)
		return [][]int64{{2, int64(c), int64(h), int64(h)}}
	}
}

func convIntFull(c, h int) func(b *modelgen.Builder) [][]int64 {
	return func(b *modelgen.Builder) [][]int64 {
		x := b.Input("x", onnxpb.Float, 2, c, h, h)
		q := b.OpN("DynamicQuantizeLinear", []string{x}, 3)
		w := int8Tensor(b, "w", true, int64(c), int64(c), 3, 3)
		y := b.Op("ConvInteger", []string{q[0], w, q[2], zeroPoint(b, "wz", true, 128, 0)}, modelgen.AttrInts("pads", 1, 1, 1, 1))
		ws := b.Param("ws", []int64{1, int64(c), 1, 1}, modelgen.Init{Mean: 0.01, Std: 0.001})
		bias := b.Param("bias", []int64{1, int64(c), 1, 1}, modelgen.Init{Std: 0.01})
		s := b.Op("Mul", []string{q[1], ws})
		b.Output(b.Op("Add", []string{b.Op("Mul", []string{castTo(b, y, onnxpb.Float), s}), bias}), "y", onnxpb.Float, 2, c, h, h)
		return [][]int64{{2, int64(c), int64(h), int64(h)}}
	}
}

func convInt(c, h int, wu bool) func(b *modelgen.Builder) [][]int64 {
	return func(b *modelgen.Builder) [][]int64 {
		x := b.Input("x", onnxpb.Float, 2, c, h, h)
		q := b.OpN("DynamicQuantizeLinear", []string{x}, 3)
		w := int8Tensor(b, "w", wu, int64(c), int64(c), 3, 3)
		wz := byte(0)
		if wu {
			wz = 128
		}
		y := b.Op("ConvInteger", []string{q[0], w, q[2], zeroPoint(b, "wz", wu, wz, 0)}, modelgen.AttrInts("pads", 1, 1, 1, 1))
		b.Output(castTo(b, y, onnxpb.Float), "y", onnxpb.Float, 2, c, h, h)
		return [][]int64{{2, int64(c), int64(h), int64(h)}}
	}
}

// KernelConfig sizes KernelLimits' graphs.
type KernelConfig struct {
	M, K, N     int // the MatMul; 0 means 2048×2048×2048 (see KernelLimits)
	Channels    int // the 3×3 convolution's channels; 0 means 320
	Side        int // its feature map's side; 0 means 64
	Threads     int // intra-op threads; 0 means ORT's default
	Rounds      int // timed rounds after two warm-ups; 0 means 5
	LibraryPath string
}

// KernelLimits times each kernel of kernels() in the same process, one
// call of each per round (rounds interleaved, so that the machine's load
// falls on all of them), and reports the best and median of each with its
// speed relative to the fp32 kernel of its family. A kernel ONNX Runtime
// cannot run is reported by an error in its place (Name says which), not
// by failing the others.
func KernelLimits(ctx context.Context, kc KernelConfig) ([]KernelResult, []error, error) {
	if kc.M == 0 {
		// 2048³, not a UNet-sized 4096×640×640: the smaller shape measured
		// 102 GOP/s on a 2-core EPYC, below the 149 GFLOP/s the plain
		// UNet itself sustained there, so it was no limit; 2048³ measured
		// 186 (BENCHMARKS.md, bench -compare)
		kc.M, kc.K, kc.N = 2048, 2048, 2048
	}
	if kc.Channels == 0 {
		kc.Channels = 320
	}
	if kc.Side == 0 {
		kc.Side = 64
	}
	if kc.Rounds == 0 {
		kc.Rounds = 5
	}
	dir, err := os.MkdirTemp("", "sdbench-kernels-")
	if err != nil {
		return nil, nil, fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)
	type open struct {
		k    kernel
		s    *ort.Session
		in   []ort.Tensor
		out  []ort.Tensor
		runs []float64
	}
	var ks []*open
	var errs []error
	defer func() {
		for _, o := range ks {
			o.s.Close()
		}
	}()
	for i, k := range kernels(kc.M, kc.K, kc.N, kc.Channels, kc.Side) {
		b := modelgen.NewBuilder(uint64(i)+1, onnxpb.Float)
		shapes := k.build(b)
		m := b.Model(17)
		m.OpsetImports = append(m.OpsetImports, onnxpb.OperatorSet{Domain: "com.microsoft", Version: 1})
		path := filepath.Join(dir, fmt.Sprintf("k%d.onnx", i))
		if err := onnxpb.WriteFile(path, m, nil); err != nil {
			return nil, nil, fmt.Errorf("bench: %s: %w", k.name, err)
		}
		ins, outs, err := ort.ReadIO(path)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: %s: %w", k.name, err)
		}
		s, err := ort.Open(ctx, path, ins, outs, ort.Options{LibraryPath: kc.LibraryPath, IntraOpThreads: kc.Threads})
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k.name, err))
			continue
		}
		o := &open{k: k, s: s}
		for j, sh := range shapes {
			d := make([]float32, ort.Elems(sh))
			for e := range d {
				d[e] = float32((e*7+j)%23)/23*4 - 2
			}
			o.in = append(o.in, ort.Tensor{Shape: sh, Data: d})
		}
		o.out = make([]ort.Tensor, len(outs))
		ks = append(ks, o)
	}
	for r := range kc.Rounds + 2 {
		for _, o := range ks {
			if o.out == nil {
				continue // failed before
			}
			t0 := time.Now()
			if err := o.s.Run(ctx, o.in, o.out); err != nil {
				if ctx.Err() != nil {
					return nil, nil, ctx.Err()
				}
				errs = append(errs, fmt.Errorf("%s: %w", o.k.name, err))
				o.out = nil
				continue
			}
			if r >= 2 {
				o.runs = append(o.runs, time.Since(t0).Seconds())
			}
		}
	}
	var res []KernelResult
	ref := map[string]float64{}   // family → fp32 GOP/s
	family := map[string]string{} // kernel name → family
	for _, o := range ks {
		if len(o.runs) == 0 {
			continue
		}
		slices.Sort(o.runs)
		kr := KernelResult{Name: o.k.name, Family: o.k.family, FP32: o.k.fp32, Op: o.k.op, Shape: o.k.shape, GMAC: o.k.macs / 1e9,
			BestS: o.runs[0], MedianS: o.runs[len(o.runs)/2]}
		kr.GOPS = 2 * o.k.macs / kr.BestS / 1e9
		family[kr.Name] = o.k.family
		if o.k.fp32 {
			ref[o.k.family] = kr.GOPS
		}
		res = append(res, kr)
	}
	for j := range res {
		if f := ref[family[res[j].Name]]; f > 0 {
			res[j].VsFP32 = res[j].GOPS / f
		}
	}
	return res, errs, nil
}

// WriteKernels prints KernelLimits' results as a Markdown table.
func WriteKernels(w io.Writer, rs []KernelResult, errs []error) {
	fmt.Fprintln(w, "| kernel | shape | best ms | median ms | GOP/s | × fp32 of its family |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	for _, r := range rs {
		fmt.Fprintf(w, "| %s | %s | %.3g | %.3g | %.0f | %.2f |\n", r.Name, r.Shape, 1e3*r.BestS, 1e3*r.MedianS, r.GOPS, r.VsFP32)
	}
	for _, e := range errs {
		fmt.Fprintf(w, "\nnot measured: %v\n", e)
	}
}
