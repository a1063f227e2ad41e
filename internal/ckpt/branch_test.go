package ckpt

import (
	"math"
	"path/filepath"
	"slices"
	"testing"

	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// openSession opens dir/component/model.onnx with all its inputs.
func openSession(t *testing.T, dir, component string) (*ort.Session, []ort.IOInfo) {
	t.Helper()
	path := filepath.Join(dir, component, "model.onnx")
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ort.Open(t.Context(), path, ins, outs[:1], ort.Options{IntraOpThreads: 1, InterOpThreads: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, ins
}

// feed orders the model's fixed inputs and the branch inputs as ins lists them.
func feed(t *testing.T, ins []ort.IOInfo, fixed map[string]ort.Tensor, branch map[string]BranchTensor) []ort.Tensor {
	t.Helper()
	out := make([]ort.Tensor, len(ins))
	for i, in := range ins {
		if v, ok := fixed[in.Name]; ok {
			out[i] = v
			continue
		}
		b, ok := branch[in.Name]
		if !ok {
			t.Fatalf("no value for input %s", in.Name)
		}
		out[i] = ort.Tensor{Shape: b.Shape, Data: b.Data}
	}
	return out
}

// TestBranchesMatchMerged runs the tiny model built with LoRA branches on a
// batch whose rows apply tiny-lora at 1.0, at 0.5, and not at all, and
// compares each row with the graphs that have the LoRA merged at that
// multiplier (and with the plain graphs): one session, one call, three
// LoRA settings.
func TestBranchesMatchMerged(t *testing.T) {
	testenv.RequireORT(t)
	lora := filepath.Join(loraDir(t), "tiny-lora.safetensors")
	cache := t.TempDir()
	branched := tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache, LoRABranches: true})
	merged := map[string]*Built{
		"1.0":  tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache, LoRAs: []LoRASpec{{lora, 1}}}),
		"0.5":  tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache, LoRAs: []LoRASpec{{lora, 0.5}}}),
		"none": tinyBuild(t, "tiny-sd.safetensors", BuildOptions{CacheDir: cache}),
	}
	_, m := tinyModel(t)
	l, err := LoadLoRA(lora, m.LoRATargets(), false)
	if err != nil {
		t.Fatal(err)
	}
	rows := [][]Applied{{{l, 1}}, {{l, 0.5}}, nil}
	names := []string{"1.0", "0.5", "none"}

	// Text encoder: three rows of the same prompt ids.
	ref := testenv.LoadTinyReference(t)
	ids := ref.ORT.TextEncoderCalls[0].InputIDs
	bs, err := branched.Branches(TextEncoder)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(bs.Of(TextEncoder)); n != 5*6 {
		t.Errorf("%d text-encoder branches, want 30", n)
	}
	in, err := BranchInputs(bs, TextEncoder, rows)
	if err != nil {
		t.Fatal(err)
	}
	s, ins := openSession(t, branched.Dir, "text_encoder")
	all := slices.Concat(ids, ids, ids)
	out := []ort.Tensor{{Shape: []int64{3, 77, 32}}}
	if err := s.Run(t.Context(), feed(t, ins, map[string]ort.Tensor{"input_ids": {Shape: []int64{3, 77}, Data: all}}, in), out); err != nil {
		t.Fatal(err)
	}
	got := out[0].Data.([]float32)
	for r, name := range names {
		ms, mins := openSession(t, merged[name].Dir, "text_encoder")
		mo := []ort.Tensor{{Shape: []int64{1, 77, 32}}}
		if err := ms.Run(t.Context(), feed(t, mins, map[string]ort.Tensor{"input_ids": {Shape: []int64{1, 77}, Data: ids}}, nil), mo); err != nil {
			t.Fatal(err)
		}
		if d := testenv.MaxAbsDiff(got[r*77*32:(r+1)*77*32], mo[0].Data.([]float32)); d > 1e-5 {
			t.Errorf("text encoder row %d (LoRA %s): differs from the merged graph by %g", r, name, d)
		} else {
			t.Logf("text encoder row %d (LoRA %s): max |Δ| %.2g", r, name, d)
		}
	}

	// UNet: three rows of one step's sample.
	bu, err := branched.Branches(UNet)
	if err != nil {
		t.Fatal(err)
	}
	in, err = BranchInputs(bu, UNet, rows)
	if err != nil {
		t.Fatal(err)
	}
	step := ref.ORT.Steps[3]
	sample := step.SampleInput[:4*8*8]
	ehs := ref.ORT.TextEncoderCalls[0].LastHiddenState
	fixed := func(n int) map[string]ort.Tensor {
		var smp, ctx []float32
		ts := make([]float32, n)
		for i := range n {
			smp, ctx = append(smp, sample...), append(ctx, ehs...)
			ts[i] = step.TimestepInput[0]
		}
		return map[string]ort.Tensor{
			"sample":                {Shape: []int64{int64(n), 4, 8, 8}, Data: smp},
			"timestep":              {Shape: []int64{int64(n)}, Data: ts},
			"encoder_hidden_states": {Shape: []int64{int64(n), 77, 32}, Data: ctx},
		}
	}
	s, ins = openSession(t, branched.Dir, "unet")
	out = []ort.Tensor{{Shape: []int64{3, 4, 8, 8}}}
	if err := s.Run(t.Context(), feed(t, ins, fixed(3), in), out); err != nil {
		t.Fatal(err)
	}
	got = out[0].Data.([]float32)
	var worstBase float64
	for r, name := range names {
		ms, mins := openSession(t, merged[name].Dir, "unet")
		mo := []ort.Tensor{{Shape: []int64{1, 4, 8, 8}}}
		if err := ms.Run(t.Context(), feed(t, mins, fixed(1), nil), mo); err != nil {
			t.Fatal(err)
		}
		want := mo[0].Data.([]float32)
		if d := testenv.MaxAbsDiff(got[r*256:(r+1)*256], want); d > 1e-5 {
			t.Errorf("UNet row %d (LoRA %s): differs from the merged graph by %g", r, name, d)
		} else {
			t.Logf("UNet row %d (LoRA %s): max |Δ| %.2g", r, name, d)
		}
		if name == "none" {
			worstBase = math.Max(worstBase, testenv.MaxAbsDiff(got[:256], want))
		}
	}
	if worstBase < 1e-3 {
		t.Errorf("the LoRA row differs from the base by only %g: was the LoRA applied?", worstBase)
	}
}
