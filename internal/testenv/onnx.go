package testenv

import (
	"encoding/binary"
	"math"
	"os"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
)

// ReadModel decodes the ONNX file at path (its external data stays where
// it is, referenced), failing the test where it cannot.
func ReadModel(t testing.TB, path string) *onnxpb.Model {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m, err := onnxpb.Unmarshal(b)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// DoubleAttentionScales doubles the attention scales of the tiny reference
// UNet m (or of a rewrite of it): its scalar float32 Constants between 0.3
// and 0.4, 1/√8 for its heads of 8. It returns how many it changed and
// fails the test when there is none: a change that alters the outputs, for
// the tests that must see one.
func DoubleAttentionScales(t testing.TB, m *onnxpb.Model) int {
	t.Helper()
	changed := 0
	for _, n := range m.Graph.Nodes {
		if n.OpType != "Constant" || len(n.Attribute) != 1 || n.Attribute[0].T == nil {
			continue
		}
		tt := n.Attribute[0].T
		if tt.DataType != onnxpb.Float || len(tt.Dims) != 0 || len(tt.RawData) != 4 {
			continue
		}
		if v := math.Float32frombits(binary.LittleEndian.Uint32(tt.RawData)); v > 0.3 && v < 0.4 {
			tt.RawData = binary.LittleEndian.AppendUint32(nil, math.Float32bits(2*v))
			changed++
		}
	}
	if changed == 0 {
		t.Fatal("no attention scale in the UNet")
	}
	return changed
}
