package ort_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// textEncoderIO is the signature of the reference model's text encoder
// (see ../shared/reference/README.md).
var (
	teIn  = []ort.IOInfo{{Name: "input_ids", DType: ort.Int32, Shape: []int64{-1, -1}}}
	teOut = []ort.IOInfo{
		{Name: "last_hidden_state", DType: ort.Float32, Shape: []int64{-1, -1, 32}},
		{Name: "pooler_output", DType: ort.Float32, Shape: []int64{-1, 32}},
	}
)

func openTE(t *testing.T, o ort.Options) *ort.Session {
	t.Helper()
	testenv.RequireORT(t)
	path := filepath.Join(testenv.TinyReferenceModel(t), "text_encoder", "model.onnx")
	s, err := ort.Open(t.Context(), path, teIn, teOut, o)
	return testenv.CloseAtEnd(t, s, err)
}

func TestRunMatchesReference(t *testing.T) {
	calls := testenv.LoadTinyReference(t).ORT.TextEncoderCalls
	s := openTE(t, ort.Options{IntraOpThreads: 1})
	for i, c := range calls {
		shape := []int64{1, int64(len(c.InputIDs))}
		// auto-allocated outputs
		out := make([]ort.Tensor, 2)
		if err := s.Run(t.Context(), []ort.Tensor{{Shape: shape, Data: c.InputIDs}}, out); err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(out[0].Data.([]float32), c.LastHiddenState); d > 1e-4 {
			t.Errorf("call %d: last_hidden_state differs by %g", i, d)
		}
		if d := testenv.MaxAbsDiff(out[1].Data.([]float32), c.PoolerOutput); d > 1e-4 {
			t.Errorf("call %d: pooler_output differs by %g", i, d)
		}
		// preallocated outputs, int64 ids converted to the model's int32
		ids64 := make([]int64, len(c.InputIDs))
		for j, v := range c.InputIDs {
			ids64[j] = int64(v)
		}
		out = []ort.Tensor{{Shape: []int64{1, 77, 32}}, {Shape: []int64{1, 32}, Data: make([]float32, 32)}}
		if err := s.Run(t.Context(), []ort.Tensor{{Shape: shape, Data: ids64}}, out); err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(out[0].Data.([]float32), c.LastHiddenState); d > 1e-4 {
			t.Errorf("call %d (preallocated): last_hidden_state differs by %g", i, d)
		}
	}
	if n, busy := s.Stats(); n != int64(2*len(calls)) || busy <= 0 {
		t.Errorf("Stats() = %d calls, %v busy", n, busy)
	}
}

// TestSessionOptions opens sessions with each optional setting and checks
// that they still give the reference outputs.
func TestSessionOptions(t *testing.T) {
	calls := testenv.LoadTinyReference(t).ORT.TextEncoderCalls
	for name, o := range map[string]ort.Options{
		"no spinning, 2 threads": {IntraOpThreads: 2, InterOpThreads: 1, NoSpinning: true},
		"session config":         {IntraOpThreads: 1, SessionConfig: map[string]string{"session.disable_prepacking": "1"}},
		"no arena, no pattern":   {IntraOpThreads: 1, DisableMemArena: true, DisableMemPattern: true},
	} {
		t.Run(name, func(t *testing.T) {
			s := openTE(t, o)
			c := calls[0]
			out := make([]ort.Tensor, 2)
			if err := s.Run(t.Context(), []ort.Tensor{{Shape: []int64{1, int64(len(c.InputIDs))}, Data: c.InputIDs}}, out); err != nil {
				t.Fatal(err)
			}
			if d := testenv.MaxAbsDiff(out[0].Data.([]float32), c.LastHiddenState); d > 1e-4 {
				t.Errorf("last_hidden_state differs by %g", d)
			}
		})
	}
}

func TestRunConcurrent(t *testing.T) {
	calls := testenv.LoadTinyReference(t).ORT.TextEncoderCalls
	s := openTE(t, ort.Options{IntraOpThreads: 1})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			c := calls[g%len(calls)]
			out := make([]ort.Tensor, 2)
			if err := s.Run(context.Background(), []ort.Tensor{{Shape: []int64{1, 77}, Data: c.InputIDs}}, out); err != nil {
				errs <- err
				return
			}
			if d := testenv.MaxAbsDiff(out[0].Data.([]float32), c.LastHiddenState); d > 1e-4 {
				errs <- errors.New("concurrent result differs")
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestRunErrors(t *testing.T) {
	s := openTE(t, ort.Options{})
	ids := make([]int32, 77)
	tests := []struct {
		name string
		in   []ort.Tensor
		out  []ort.Tensor
		want string
	}{
		{"too few outputs", []ort.Tensor{{Shape: []int64{1, 77}, Data: ids}}, make([]ort.Tensor, 1), "outputs given"},
		{"wrong data type", []ort.Tensor{{Shape: []int64{1, 77}, Data: []float32{1}}}, make([]ort.Tensor, 2), "want []int32"},
		{"short data", []ort.Tensor{{Shape: []int64{1, 78}, Data: ids}}, make([]ort.Tensor, 2), "needs 78 elements"},
		{"wrong rank", []ort.Tensor{{Shape: []int64{77}, Data: ids}}, make([]ort.Tensor, 2), "rank"},
		{"bad output buffer", []ort.Tensor{{Shape: []int64{1, 77}, Data: ids}}, []ort.Tensor{{Shape: []int64{1, 77, 32}, Data: make([]float32, 3)}, {}}, "buffer has 3"},
		{"out of range id", []ort.Tensor{{Shape: []int64{1, 1}, Data: []int32{1 << 30}}}, make([]ort.Tensor, 2), "run"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Run(t.Context(), tc.in, tc.out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Run() error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestRunCanceled(t *testing.T) {
	s := openTE(t, ort.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	err := s.Run(ctx, []ort.Tensor{{Shape: []int64{1, 77}, Data: make([]int32, 77)}}, make([]ort.Tensor, 2))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run() with canceled ctx = %v, want context.Canceled", err)
	}
}

func TestClose(t *testing.T) {
	s := openTE(t, ort.Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	err := s.Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 77}, Data: make([]int32, 77)}}, make([]ort.Tensor, 2))
	if !errors.Is(err, ort.ErrClosed) {
		t.Errorf("Run() after Close = %v, want ErrClosed", err)
	}
}

func TestOpenErrors(t *testing.T) {
	testenv.RequireORT(t)
	dir := t.TempDir()
	bad := filepath.Join(dir, "model.onnx")
	if err := os.WriteFile(bad, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ort.Open(t.Context(), bad, teIn, teOut, ort.Options{}); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("Open(garbage) = %v, want an error naming %s", err, bad)
	}
	_, err := ort.Open(t.Context(), bad, teIn, teOut, ort.Options{Provider: "nosuch"})
	var pe *ort.ProviderError
	if !errors.As(err, &pe) {
		t.Errorf("Open(unknown provider) = %v, want a ProviderError", err)
	}
	// this library (the npm build) has none of these: each must be a clear
	// error, not a crash
	good := filepath.Join(testenv.TinyReferenceModel(t), "text_encoder", "model.onnx")
	for _, p := range []ort.Provider{ort.CUDA, ort.TensorRT, ort.CoreML, ort.DirectML, ort.OpenVINO} {
		_, err = ort.Open(t.Context(), good, teIn, teOut, ort.Options{Provider: p})
		if !errors.As(err, &pe) {
			t.Errorf("Open(%s) = %v, want a ProviderError (this library lacks it)", p, err)
		}
	}
}

func TestLibraryNotFound(t *testing.T) {
	// An explicit path is never overridden by the other candidates; this
	// test needs a process where the library is not loaded yet, so it only
	// checks the error when nothing else holds the environment.
	_, _, err := ort.Version(filepath.Join(t.TempDir(), "libonnxruntime.so.1"))
	if err == nil {
		t.Skip("library already loaded in this process")
	}
	var le *ort.LibraryError
	if !errors.As(err, &le) || !errors.Is(err, ort.ErrLibraryNotFound) {
		t.Fatalf("Version(missing) = %v, want a LibraryError", err)
	}
	if !strings.Contains(err.Error(), "scripts/setup.sh") || len(le.Tried) != 1 {
		t.Errorf("error %q should list the path tried and the setup command", err)
	}
}
