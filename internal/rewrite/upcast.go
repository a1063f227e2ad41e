package rewrite

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	fp16 "github.com/sdpipe/sdpipe/internal/half"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// ErrUpcast reports a float16 model that Upcast cannot widen.
var ErrUpcast = errors.New("rewrite: cannot upcast")

// Upcast returns the path of a float32 copy of the float16 model at path:
// every float16 weight, constant, cast and input or output made float32,
// so that the graph computes in float32 (what diffusers does for a VAE
// whose config says force_upcast: SDXL's overflows in float16). The copy
// is built once in cache, keyed by the model file's content. A model with
// external data or subgraphs gives an error matching ErrUpcast.
func Upcast(path, cache string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("rewrite: %w", err)
	}
	sum := sha256.Sum256(b)
	dir := filepath.Join(cache, "upcast-"+hex.EncodeToString(sum[:16]))
	out := filepath.Join(dir, modelName)
	valid := func(dir string) error {
		st, err := os.Stat(filepath.Join(dir, modelName))
		if err != nil {
			return err
		}
		if st.Size() == 0 {
			return io.ErrUnexpectedEOF
		}
		return nil
	}
	err = cachedir.Build(dir, valid, func(tmp string) error {
		m, err := onnxpb.Unmarshal(b)
		if err != nil {
			return fmt.Errorf("rewrite: %s: %w", path, err)
		}
		if err := upcastGraph(m.Graph); err != nil {
			return fmt.Errorf("%w: %s: %w", ErrUpcast, path, err)
		}
		return onnxpb.WriteFile(filepath.Join(tmp, modelName), m, nil)
	})
	if err != nil {
		return "", err
	}
	return out, nil
}

// upcastGraph widens g's float16 values to float32 in place.
func upcastGraph(g *onnxpb.Graph) error {
	for _, t := range g.Initializer {
		if err := upcastTensor(t); err != nil {
			return err
		}
	}
	for _, vs := range [][]onnxpb.ValueInfo{g.Input, g.Output, g.ValueInfo} {
		for i := range vs {
			if vs[i].ElemType == onnxpb.Float16 {
				vs[i].ElemType = onnxpb.Float
			}
		}
	}
	for _, n := range g.Nodes {
		for _, a := range n.Attribute {
			switch {
			case a.Type == onnxpb.AttrGraph:
				return fmt.Errorf("node %s (%s) has a subgraph", n.Name, n.OpType)
			case a.T != nil:
				if err := upcastTensor(a.T); err != nil {
					return err
				}
			case a.Type == onnxpb.AttrInt && (n.OpType == "Cast" && a.Name == "to" || a.Name == "dtype") && a.I == int64(onnxpb.Float16):
				a.I = int64(onnxpb.Float)
			}
		}
	}
	return nil
}

// upcastTensor widens a float16 tensor held in the file (raw_data, or
// int32_data as ONNX stores float16 without raw data).
func upcastTensor(t *onnxpb.Tensor) error {
	if t.DataType != onnxpb.Float16 {
		return nil
	}
	if len(t.ExternalData) > 0 || t.DataLocation == onnxpb.LocationExternal {
		return fmt.Errorf("tensor %s has external data", t.Name)
	}
	n := int(t.NumElements())
	f := make([]float32, n)
	switch {
	case len(t.RawData) == 2*n:
		for i := range f {
			f[i] = fp16.ToFloat32(binary.LittleEndian.Uint16(t.RawData[2*i:]))
		}
	case len(t.Int32Data) == n:
		for i, v := range t.Int32Data {
			f[i] = fp16.ToFloat32(uint16(v))
		}
	default:
		return fmt.Errorf("tensor %s: %d raw bytes, %d int32 values for %d float16 elements", t.Name, len(t.RawData), len(t.Int32Data), n)
	}
	raw := make([]byte, 4*n)
	for i, v := range f {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	t.DataType, t.RawData, t.Int32Data = onnxpb.Float, raw, nil
	return nil
}
