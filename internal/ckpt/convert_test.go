package ckpt

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/safetensors"
	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// tinyDir returns ../shared/reference/tiny-ckpt, or skips.
func tinyDir(t testing.TB) string {
	t.Helper()
	return shareddir.File(t, "reference/tiny-ckpt")
}

// tinyConfig is what the tiny model's configs say that its tensors cannot:
// its text encoder has 4 heads (no released CLIP has hidden size 32).
var tinyConfig = &Config{TextHeads: map[Component]int{TextEncoder: 4}}

func openTiny(t testing.TB, name string) *safetensors.File {
	t.Helper()
	f, err := safetensors.Open(filepath.Join(tinyDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestTinyKeymap converts the tiny checkpoint and compares every key with
// keymap.json, which diffusers' own single-file loader produced.
func TestTinyKeymap(t *testing.T) {
	f := openTiny(t, "tiny-sd.safetensors")
	a, err := Detect(f.Tensors, tinyConfig)
	if err != nil {
		t.Fatal(err)
	}
	want := UNetArch{InChannels: 4, OutChannels: 4, BlockChannels: []int{32, 64}, LayersPerBlock: 2,
		CrossAttention: []bool{false, true}, TransformerDepth: []int{0, 1}, MidDepth: 1, Heads: []int{8, 8},
		CrossAttentionDim: 32, TimeEmbedDim: 128}
	if diff := cmp.Diff(want, a.UNet); diff != "" {
		t.Errorf("UNet (-want +got):\n%s", diff)
	}
	if a.Family != SD1 || a.Inpainting || a.Prediction != "epsilon" {
		t.Errorf("family %s, inpainting %v, prediction %s", a.Family, a.Inpainting, a.Prediction)
	}
	wantText := TextArch{Component: TextEncoder, TextConfig: modelgen.TextConfig{Vocab: 49408, Hidden: 32, Layers: 5, Heads: 4, Intermediate: 37,
		MaxPositions: 77, Activation: "quick_gelu"}, LayerNormEps: 1e-5, PadToken: "<|endoftext|>"}
	if diff := cmp.Diff([]TextArch{wantText}, a.Text); diff != "" {
		t.Errorf("text encoder (-want +got):\n%s", diff)
	}
	wantVAE := VAEArch{InChannels: 3, OutChannels: 3, LatentChannels: 4, BlockChannels: []int{32, 32, 64, 64}, LayersPerBlock: 1, ScalingFactor: 0.18215}
	if diff := cmp.Diff(wantVAE, a.VAE); diff != "" {
		t.Errorf("VAE (-want +got):\n%s", diff)
	}
	m, err := Convert(f.Tensors, a)
	if err != nil {
		t.Fatal(err)
	}
	var km struct {
		Entries []struct {
			LDMKey         string  `json:"ldm_key"`
			Component      string  `json:"component"`
			DiffusersKey   string  `json:"diffusers_key"`
			DiffusersShape []int64 `json:"diffusers_shape"`
		} `json:"entries"`
	}
	shareddir.ReadJSON(t, filepath.Join(tinyDir(t), "keymap.json"), &km)
	if len(km.Entries) != 568 {
		t.Fatalf("keymap has %d entries", len(km.Entries))
	}
	n := 0
	for _, e := range km.Entries {
		p, ok := m.Lookup(Component(e.Component), e.DiffusersKey)
		if !ok {
			t.Errorf("%s → %s %s: not produced", e.LDMKey, e.Component, e.DiffusersKey)
			continue
		}
		if p.Key != e.LDMKey || !cmp.Equal(p.Shape, e.DiffusersShape) || p.Rows != [2]int64{} || p.Transpose {
			t.Errorf("%s %s: got %+v, want key %s shape %v", e.Component, e.DiffusersKey, p, e.LDMKey, e.DiffusersShape)
		}
		n++
	}
	total := 0
	for _, ps := range m.Params {
		total += len(ps)
	}
	if total != 568 || len(m.Ignored) != 0 {
		t.Errorf("%d parameters (want 568), %d ignored keys %v (want none)", total, len(m.Ignored), m.Ignored)
	}
	t.Logf("%d of 568 keys as diffusers' loader maps them", n)
}

// numel sums the elements of a component's parameters.
func numel(ps map[string]Param) int64 {
	var n int64
	for _, p := range ps {
		e := int64(1)
		for _, d := range p.Shape {
			e *= d
		}
		n += e
	}
	return n
}

func specsInfo(ts []TensorSpec) []safetensors.Info {
	out := make([]safetensors.Info, len(ts))
	for i, s := range ts {
		out[i] = safetensors.Info{Name: s.Name, DType: s.DType, Shape: s.Shape}
	}
	return out
}

// TestPublished builds the key layout of each released architecture from
// the original modules' structure (checked offline against the key lists of
// released files), detects it back and converts it. The converted
// parameters must add up to the published diffusers/transformers parameter
// counts.
func TestPublished(t *testing.T) {
	tests := []struct {
		f       Family
		inpaint bool
		keys    int // tensors in the file, extras included
		counts  map[Component]int64
		ignored int
	}{
		{SD1, false, 686 + 248 + 197 + 14, map[Component]int64{UNet: 859_520_964, TextEncoder: 123_060_480, VAE: 83_653_863}, 15},
		{SD1, true, 686 + 248 + 197 + 14, map[Component]int64{UNet: 859_535_364, TextEncoder: 123_060_480, VAE: 83_653_863}, 15},
		{SD2, false, 686 + 248 + 294 + 14, map[Component]int64{UNet: 865_910_724, TextEncoder: 340_387_840, VAE: 83_653_863}, 14 + 1 + 12 + 1},
		{SDXL, false, 1680 + 248 + 196 + 390, map[Component]int64{UNet: 2_567_463_684, TextEncoder: 123_060_480, TextEncoder2: 694_659_840, VAE: 83_653_863}, 1},
		{SDXLRefiner, false, 1220 + 248 + 390, nil, 1},
	}
	for _, tc := range tests {
		name := string(tc.f)
		if tc.inpaint {
			name += "-inpainting"
		}
		t.Run(name, func(t *testing.T) {
			want, err := Published(tc.f, tc.inpaint)
			if err != nil {
				t.Fatal(err)
			}
			ts := specsInfo(OriginalLayout(want, safetensors.F16, true))
			if len(ts) != tc.keys {
				t.Errorf("%d tensors, want %d", len(ts), tc.keys)
			}
			got, err := Detect(ts, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("detected architecture (-want +got):\n%s", diff)
			}
			m, err := Convert(ts, got)
			if err != nil {
				t.Fatal(err)
			}
			for c, n := range tc.counts {
				if g := numel(m.Params[c]); g != n {
					t.Errorf("%s: %d parameters, want %d", c, g, n)
				}
			}
			if len(m.Ignored) != tc.ignored {
				t.Errorf("%d ignored keys, want %d: %v", len(m.Ignored), tc.ignored, m.Ignored)
			}
		})
	}
}

// TestOpenCLIPSplit checks the SD 2.x and SDXL text-encoder specifics: the
// fused in_proj split into row ranges and the transposed projection.
func TestOpenCLIPSplit(t *testing.T) {
	a, _ := Published(SDXL, false)
	ts := specsInfo(OriginalLayout(a, safetensors.F16, false))
	m, err := Convert(ts, a)
	if err != nil {
		t.Fatal(err)
	}
	const in = "conditioner.embedders.1.model.transformer.resblocks.3.attn.in_proj_weight"
	for i, n := range []string{"q_proj", "k_proj", "v_proj"} {
		p, ok := m.Lookup(TextEncoder2, "text_model.encoder.layers.3.self_attn."+n+".weight")
		want := Param{Key: in, Shape: []int64{1280, 1280}, Rows: [2]int64{int64(i) * 1280, int64(i+1) * 1280}}
		if !ok || !cmp.Equal(p, want) {
			t.Errorf("%s: %+v, want %+v", n, p, want)
		}
	}
	p, _ := m.Lookup(TextEncoder2, "text_projection.weight")
	if want := (Param{Key: "conditioner.embedders.1.model.text_projection", Shape: []int64{1280, 1280}, Transpose: true}); !cmp.Equal(p, want) || p.Contiguous() {
		t.Errorf("text_projection: %+v", p)
	}
	if _, ok := m.Lookup(TextEncoder, "text_model.encoder.layers.11.mlp.fc2.weight"); !ok {
		t.Error("SDXL's CLIP-L misses its last layer")
	}
	// SD 2.x: the last layer and the projection are not used.
	a2, _ := Published(SD2, false)
	m2, err := Convert(specsInfo(OriginalLayout(a2, safetensors.F32, false)), a2)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := m2.Lookup(TextEncoder, "text_model.encoder.layers.23.mlp.fc2.weight"); ok {
		t.Error("SD 2.x keeps layer 23")
	}
	if _, ok := m2.Lookup(TextEncoder, "text_projection.weight"); ok {
		t.Error("SD 2.x keeps text_projection")
	}
	if !strings.Contains(strings.Join(m2.Ignored, " "), "resblocks.23.mlp.c_proj.weight") {
		t.Errorf("ignored %v", m2.Ignored)
	}
}

func TestUnplacedKeys(t *testing.T) {
	a, _ := Published(SD1, false)
	ts := specsInfo(OriginalLayout(a, safetensors.F32, true))
	ts = append(ts,
		safetensors.Info{Name: "model.diffusion_model.input_blocks.99.0.in_layers.0.weight", Shape: []int64{4}},
		safetensors.Info{Name: "control_model.zero_convs.0.0.weight", Shape: []int64{4}},
		safetensors.Info{Name: "model.diffusion_model.output_blocks.5.1.conv.weight", Shape: []int64{4}}, // SD 1.5 has it at .5.2
		safetensors.Info{Name: "model.diffusion_model.middle_block.1.transformer_blocks.1.norm1.weight", Shape: []int64{4}},
		safetensors.Info{Name: "model.diffusion_model.middle_block.0.in_layers.0.scale", Shape: []int64{4}},
	)
	_, err := Convert(ts, a)
	fe, ok := errors.AsType[*FormatError](err)
	if !ok {
		t.Fatalf("error %v, want a *FormatError", err)
	}
	want := []string{"control_model.zero_convs.0.0.weight", "model.diffusion_model.input_blocks.99.0.in_layers.0.weight",
		"model.diffusion_model.middle_block.0.in_layers.0.scale", "model.diffusion_model.middle_block.1.transformer_blocks.1.norm1.weight",
		"model.diffusion_model.output_blocks.5.1.conv.weight"}
	if !cmp.Equal(fe.Keys, want) || !strings.Contains(err.Error(), "5 checkpoint keys") {
		t.Errorf("error %v names %v, want %v", err, fe.Keys, want)
	}
}

func TestNotACheckpoint(t *testing.T) {
	tests := []struct {
		keys []string
		want string
	}{
		{[]string{"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"}, "LoRA"},
		{[]string{"emb_params"}, "textual-inversion"},
		{[]string{"encoder.down.0.block.0.conv1.weight"}, "VAE"},
		{[]string{"down_blocks.0.resnets.0.conv1.weight"}, "diffusers-layout"},
		{[]string{"double_blocks.0.img_attn.norm.key_norm.scale"}, "Flux"},
		{[]string{"model.diffusion_model.input_blocks.0.0.weight"}, "no text encoder"},
		{[]string{"foo"}, "not a Stable Diffusion checkpoint"},
	}
	for _, tc := range tests {
		var ts []safetensors.Info
		for _, k := range tc.keys {
			ts = append(ts, safetensors.Info{Name: k, Shape: []int64{1, 1, 1, 1}})
		}
		_, err := Detect(ts, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one saying %q", tc.keys, err, tc.want)
		}
	}
	// An unknown text-encoder width needs its head count.
	f := openTiny(t, "tiny-sd.safetensors")
	if _, err := Detect(f.Tensors, nil); err == nil || !strings.Contains(err.Error(), "hidden size 32") {
		t.Errorf("tiny without config: %v", err)
	}
}

// TestSeparateVAE converts VAE files in the original layout (with and
// without the checkpoint prefix) and in diffusers' layout (old attention
// names included) to the same parameters as the checkpoint's own VAE.
func TestSeparateVAE(t *testing.T) {
	f := openTiny(t, "tiny-sd.safetensors")
	a, err := Detect(f.Tensors, tinyConfig)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Convert(f.Tensors, a)
	if err != nil {
		t.Fatal(err)
	}
	var prefixed, bare, diffusers []safetensors.Info
	for _, x := range f.Tensors {
		if strings.HasPrefix(x.Name, vaePrefix) {
			prefixed = append(prefixed, x)
			y := x
			y.Name = strings.TrimPrefix(x.Name, vaePrefix)
			bare = append(bare, y)
		}
	}
	prefixed = append(prefixed, safetensors.Info{Name: "model_ema.decay"})
	bare = append(bare, safetensors.Info{Name: "loss.logvar"})
	old := map[string]string{"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
	for d, p := range m.Params[VAE] {
		for n, o := range old {
			d = strings.Replace(d, "attentions.0."+n, "attentions.0."+o, 1)
		}
		diffusers = append(diffusers, safetensors.Info{Name: d, Shape: p.Shape})
	}
	for name, ts := range map[string][]safetensors.Info{"prefixed": prefixed, "bare": bare, "diffusers": diffusers} {
		v, vm, err := ConvertVAE(ts)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(a.VAE, *v); diff != "" {
			t.Errorf("%s: VAE (-want +got):\n%s", name, diff)
		}
		if len(vm.Params[VAE]) != len(m.Params[VAE]) {
			t.Errorf("%s: %d parameters, want %d", name, len(vm.Params[VAE]), len(m.Params[VAE]))
		}
		for d, p := range m.Params[VAE] {
			q, ok := vm.Params[VAE][d]
			if !ok || !cmp.Equal(p.Shape, q.Shape) {
				t.Errorf("%s: %s: %+v, want shape %v", name, d, q, p.Shape)
			}
		}
	}
	if _, _, err := ConvertVAE(append(bare, safetensors.Info{Name: "decoder.bogus.weight"})); err == nil || !strings.Contains(err.Error(), "decoder.bogus.weight") {
		t.Errorf("bogus VAE key: %v", err)
	}
}
