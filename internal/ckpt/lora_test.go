package ckpt

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"math"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/shareddir"
)

func loraDir(t testing.TB) string {
	t.Helper()
	return shareddir.File(t, "reference/tiny-lora")
}

// tinyModel opens the tiny checkpoint and converts it.
func tinyModel(t testing.TB) (*File, *Mapping) {
	t.Helper()
	f, err := Open(filepath.Join(tinyDir(t), "tiny-sd.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	a, err := Detect(f.Tensors, tinyConfig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Convert(f.Tensors, a)
	if err != nil {
		t.Fatal(err)
	}
	return f, m
}

// TestLoRAMerge merges the kohya LoRA into the tiny model's weights at both
// multipliers and compares every touched tensor with the merge kohya's own
// code made (merged-layers-m*.safetensors), within 1e-6 relative to the
// tensor's largest value, and counts the bit-identical ones
// (merged-weights-m*.json sha256).
func TestLoRAMerge(t *testing.T) {
	f, m := tinyModel(t)
	dir := loraDir(t)
	l, err := LoadLoRA(filepath.Join(dir, "tiny-lora.safetensors"), m.LoRATargets(), false)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[ModuleKind]int{}
	comps := map[Component]int{}
	for _, mod := range l.Modules {
		kinds[mod.Kind]++
		comps[mod.Target.Component]++
	}
	if len(l.Modules) != 147 || kinds[Linear] != 102 || kinds[Conv1x1] != 19 || kinds[Conv3x3] != 26 || comps[UNet] != 117 || comps[TextEncoder] != 30 {
		t.Fatalf("%d modules, kinds %v, components %v", len(l.Modules), kinds, comps)
	}
	if l.Name != "tiny-lora" || l.Metadata["ss_network_dim"] != "4" {
		t.Errorf("name %q, metadata %v", l.Name, l.Metadata)
	}
	for _, mult := range []string{"1.0", "0.5"} {
		want, err := safetensors.Open(filepath.Join(dir, "merged-layers-m"+mult+".safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		defer want.Close()
		var js struct {
			Layers map[string]struct {
				SHA256 string  `json:"sha256_f32"`
				Alpha  float32 `json:"alpha"`
				Kind   string  `json:"kind"`
			} `json:"layers"`
		}
		shareddir.ReadJSON(t, filepath.Join(dir, "merged-weights-m"+mult+".json"), &js)
		mul := float32(1)
		if mult == "0.5" {
			mul = 0.5
		}
		deltas := Deltas([]Applied{{l, mul}})
		touched, exact := 0, 0
		var worst float64
		for c, ws := range deltas {
			for key, ds := range ws {
				p, ok := m.Lookup(c, key)
				if !ok {
					t.Fatalf("%s %s: not in the model", c, key)
				}
				w, err := f.Float32s(p.Key)
				if err != nil {
					t.Fatal(err)
				}
				got := Merge(w, ds)
				ref, err := want.Float32s(p.Key)
				if err != nil {
					t.Fatalf("%s: %v", p.Key, err)
				}
				var maxAbs, maxDiff float64
				for i := range ref {
					maxAbs = math.Max(maxAbs, math.Abs(float64(ref[i])))
					maxDiff = math.Max(maxDiff, math.Abs(float64(got[i]-ref[i])))
				}
				if rel := maxDiff / maxAbs; rel > 1e-6 {
					t.Errorf("m=%s %s: max |diff| %.3g, %.3g of the largest value", mult, p.Key, maxDiff, rel)
				} else {
					worst = math.Max(worst, rel)
				}
				j := js.Layers[p.Key]
				if ds[0].Module.Alpha != j.Alpha || string(ds[0].Module.Kind) != j.Kind {
					t.Errorf("%s: alpha %v kind %s, want %v %s", p.Key, ds[0].Module.Alpha, ds[0].Module.Kind, j.Alpha, j.Kind)
				}
				sum := sha256.Sum256(safetensors.FromFloat32(safetensors.F32, got))
				if hex.EncodeToString(sum[:]) == j.SHA256 {
					exact++
				}
				touched++
			}
		}
		if touched != len(js.Layers) || touched != 147 {
			t.Errorf("m=%s: %d tensors touched, the reference lists %d", mult, touched, len(js.Layers))
		}
		t.Logf("m=%s: %d tensors within %.2g relative, %d bit-identical to kohya's merge", mult, touched, worst, exact)
	}
}

func TestLoRAErrors(t *testing.T) {
	_, m := tinyModel(t)
	targets := m.LoRATargets()
	dir := t.TempDir()
	write := func(name string, ts []safetensors.WriteTensor, meta map[string]string) string {
		p := filepath.Join(dir, name)
		if err := safetensors.WriteFile(p, ts, meta); err != nil {
			t.Fatal(err)
		}
		return p
	}
	zeros := func(shape ...int64) safetensors.WriteTensor {
		n := int64(4)
		for _, d := range shape {
			n *= d
		}
		return safetensors.WriteTensor{DType: safetensors.F32, Shape: shape, Data: make([]byte, n)}
	}
	named := func(name string, t safetensors.WriteTensor) safetensors.WriteTensor { t.Name = name; return t }
	const q = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
	good := []safetensors.WriteTensor{named(q+".lora_down.weight", zeros(2, 32)), named(q+".lora_up.weight", zeros(32, 2))}

	// No alpha: alpha = rank. The LDM-style name of a UNet module works too.
	const ldm = "lora_unet_input_blocks_4_1_proj_in"
	p := write("ok.safetensors", append(good, named(ldm+".lora_down.weight", zeros(3, 64, 1, 1)), named(ldm+".lora_up.weight", zeros(64, 3, 1, 1))), nil)
	l, err := LoadLoRA(p, targets, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Modules) != 2 || l.Modules[1].Alpha != 3 || l.Modules[1].Scale() != 1 || l.Modules[1].Target.Module != "down_blocks.1.attentions.0.proj_in" {
		t.Errorf("modules %s %v, %s %v", l.Modules[1].Name, l.Modules[1].Alpha, l.Modules[1].Target.Module, l.Modules[1].Kind)
	}

	// Unknown keys: named in the error, or skipped on request.
	bad := append(good,
		named("lora_unet_nonexistent_layer.lora_down.weight", zeros(2, 32)),
		named("lora_unet_nonexistent_layer.lora_up.weight", zeros(32, 2)),
		named(q+".dora_scale", zeros(1, 32)),
		named("lora_te_text_model_encoder_layers_1_mlp_fc1.hada_w1_a", zeros(37, 2)))
	p = write("bad.safetensors", bad, map[string]string{"ss_base_model_version": "sdxl_base_v1-0"})
	_, err = LoadLoRA(p, targets, false)
	uk, ok := errors.AsType[*UnknownKeysError](err)
	if !ok || len(uk.Keys) != 4 || !strings.Contains(err.Error(), "lora_unet_nonexistent_layer.lora_down.weight") || !strings.Contains(err.Error(), "hada_w1_a") {
		t.Fatalf("unknown keys: %v", err)
	}
	l, err = LoadLoRA(p, targets, true)
	if err != nil || len(l.Modules) != 1 || len(l.Skipped) != 4 {
		t.Fatalf("skipping: %v, %+v", err, l)
	}

	// A LoRA for another family says so.
	p = write("xl.safetensors", []safetensors.WriteTensor{named("lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.lora_down.weight", zeros(2, 640)),
		named("lora_unet_input_blocks_4_1_transformer_blocks_7_attn1_to_q.lora_up.weight", zeros(640, 2))}, map[string]string{"ss_base_model_version": "sdxl_base_v1-0"})
	if _, err = LoadLoRA(p, targets, false); err == nil || !strings.Contains(err.Error(), "sdxl_base_v1-0") {
		t.Errorf("SDXL LoRA: %v", err)
	}
	// Shapes that do not fit the layer.
	p = write("shape.safetensors", []safetensors.WriteTensor{named(q+".lora_down.weight", zeros(2, 64)), named(q+".lora_up.weight", zeros(32, 2))}, nil)
	if _, err = LoadLoRA(p, targets, false); err == nil || !strings.Contains(err.Error(), "do not fit") {
		t.Errorf("wrong shape: %v", err)
	}
}
