package modelgen

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/tokenizer"
)

// refSignature is one component of onnx_signatures.json.
type refSignature struct {
	Inputs, Outputs []struct {
		Name  string `json:"name"`
		DType string `json:"dtype"`
		Shape []any  `json:"shape"`
	}
}

// signatureOf formats a component's inputs and outputs as
// "in|out name dtype [dims]", symbolic dims as their names.
func signatureOf(vs []onnxpb.ValueInfo, dir string) []string {
	var s []string
	for _, v := range vs {
		var dims []string
		for _, d := range v.Dims {
			dims = append(dims, d.String())
		}
		s = append(s, fmt.Sprintf("%s %s %s [%s]", dir, v.Name, v.ElemType, strings.Join(dims, ",")))
	}
	return s
}

func (r refSignature) lines() []string {
	var s []string
	for _, part := range []struct {
		dir string
		vs  []struct {
			Name  string `json:"name"`
			DType string `json:"dtype"`
			Shape []any  `json:"shape"`
		}
	}{{"in", r.Inputs}, {"out", r.Outputs}} {
		for _, v := range part.vs {
			var dims []string
			for _, d := range v.Shape {
				switch d := d.(type) {
				case float64:
					dims = append(dims, strconv.Itoa(int(d)))
				default:
					dims = append(dims, fmt.Sprint(d))
				}
			}
			s = append(s, fmt.Sprintf("%s %s %s [%s]", part.dir, v.Name, v.DType, strings.Join(dims, ",")))
		}
	}
	return s
}

// TestSDXLSignatures writes the tiny SDXL folder and checks every
// component's inputs and outputs (names, order, dtypes, dims) against what
// optimum 1.23.3 wrote for the reference tiny SDXL, and the newer optimum
// variant (float32 scalar timestep, int64 text_encoder ids) against the
// same signature with those two changes.
func TestSDXLSignatures(t *testing.T) {
	var ref map[string]refSignature
	shareddir.ReadJSON(t, filepath.Join(testenv.SharedDir(t), "reference", "tiny-sdxl", "onnx_signatures.json"), &ref)
	components := []string{TextEncoderDir, TextEncoder2Dir, UNetDir, VAEEncoderDir, VAEDecoderDir}
	for _, tt := range []struct {
		name string
		opt  Options
		edit func(c string, lines []string) []string
	}{
		{"optimum 1.23", Options{}, nil},
		{"newer optimum", Options{Timestep: onnxpb.Float, TimestepShape: TimestepScalar, IDs: onnxpb.Int64}, func(c string, lines []string) []string {
			for i, l := range lines {
				switch {
				case c == UNetDir && strings.HasPrefix(l, "in timestep "):
					lines[i] = "in timestep float32 []"
				case c == TextEncoderDir && strings.HasPrefix(l, "in input_ids "):
					lines[i] = strings.Replace(l, "int32", "int64", 1)
				}
			}
			return lines
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := Write(dir, TinySDXL(), tt.opt); err != nil {
				t.Fatal(err)
			}
			for _, c := range components {
				want := ref[c].lines()
				if len(want) == 0 {
					t.Fatalf("no reference signature for %s", c)
				}
				if tt.edit != nil {
					want = tt.edit(c, want)
				}
				io, err := onnxpb.ReadIO(filepath.Join(dir, c, ModelFile))
				if err != nil {
					t.Fatal(err)
				}
				got := append(signatureOf(io.Inputs, "in"), signatureOf(io.Outputs, "out")...)
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("%s signature (-optimum +generated):\n%s", c, diff)
				}
			}
		})
	}
}

// TestSDXLFolder checks the tiny SDXL folder's files: the pipeline index,
// tokenizer_2 padding with "!", configs that parse back to the
// configuration, the scheduler config as SDXL base ships it, and external
// data on request.
func TestSDXLFolder(t *testing.T) {
	cfg := TinySDXL()
	dir := t.TempDir()
	if err := Write(dir, cfg, Options{ExternalFile: onnxpb.OptimumExternalFile}); err != nil {
		t.Fatal(err)
	}
	var index map[string]any
	shareddir.ReadJSON(t, filepath.Join(dir, "model_index.json"), &index)
	if index["_class_name"] != "StableDiffusionXLPipeline" || index["force_zeros_for_empty_prompt"] != true {
		t.Errorf("model_index = %v", index)
	}
	for _, c := range []string{UNetDir, TextEncoder2Dir} {
		files, err := onnxpb.ExternalFiles(filepath.Join(dir, c, ModelFile))
		if err != nil || !cmp.Equal(files, []string{onnxpb.OptimumExternalFile}) {
			t.Errorf("%s external files %v, %v", c, files, err)
		}
	}
	for _, c := range []string{TextEncoderDir, VAEDecoderDir, VAEEncoderDir} {
		if files, err := onnxpb.ExternalFiles(filepath.Join(dir, c, ModelFile)); err != nil || len(files) != 0 {
			t.Errorf("%s external files %v, %v", c, files, err)
		}
	}
	tok, err := tokenizer.Load(filepath.Join(dir, Tokenizer2Dir))
	if err != nil {
		t.Fatal(err)
	}
	if tok.Pad() != 0 {
		t.Errorf("tokenizer_2 pads with %d, want 0 (\"!\")", tok.Pad())
	}
	if ids := tok.Encode("a photo"); ids[len(ids)-1] != 0 || ids[3] != tok.EOS() {
		t.Errorf("tokenizer_2 ids %v", ids)
	}
	tok1, err := tokenizer.Load(filepath.Join(dir, TokenizerDir))
	if err != nil || tok1.Pad() != tok1.EOS() {
		t.Errorf("tokenizer pads with %v (%v), want EOS", tok1.Pad(), err)
	}

	text, text2, un, vae := readSDXLConfig(t, dir, VAEEncoderDir)
	back := Config{Name: cfg.Name, Text: text, Text2: &text2, UNet: un, VAE: vae, Scheduler: cfg.Scheduler}
	if diff := cmp.Diff(cfg, back); diff != "" {
		t.Errorf("configs read back (-written +read):\n%s", diff)
	}

	// The scheduler config is SDXL base's (compared with the reference's).
	var got, want map[string]any
	shareddir.ReadJSON(t, filepath.Join(dir, SchedulerDir, "scheduler_config.json"), &got)
	shareddir.ReadJSON(t, filepath.Join(testenv.SharedDir(t), "reference", "tiny-sdxl", "model", "scheduler", "scheduler_config.json"), &want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("scheduler config (-SDXL base +generated):\n%s", diff)
	}
}

// onnxStateDict recovers the state dict of a component from a PyTorch ONNX
// export: initializers keep their state-dict names (directly or through the
// Identity nodes of deduplicated tensors), except the weights of Linear
// layers, exported transposed as "onnx::MatMul_N", and the GroupNorm
// affines, exported as "onnx::Mul_N"/"onnx::Add_N" [C,1,1]: those are named
// after the scope of the node that uses them ("/down_blocks.1/…/to_q/MatMul"
// → "down_blocks.1.….to_q.weight").
func onnxStateDict(t *testing.T, path string) map[string]*onnxpb.Tensor {
	t.Helper()
	m := testenv.ReadModel(t, path)
	inits := map[string]*onnxpb.Tensor{}
	for _, in := range m.Graph.Initializer {
		if in.DataType != onnxpb.Float {
			continue
		}
		if loc, off, n, ok := in.ExternalRange(); ok { // the legacy UNet's weights.pb
			f, err := os.Open(filepath.Join(filepath.Dir(path), loc))
			if err != nil {
				t.Fatal(err)
			}
			raw := make([]byte, n)
			_, err = f.ReadAt(raw, off)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			c := *in
			c.DataLocation, c.ExternalData, c.RawData = onnxpb.LocationDefault, nil, raw
			in = &c
		}
		inits[in.Name] = in
	}
	for _, n := range m.Graph.Nodes {
		if n.OpType == "Identity" && inits[n.Input[0]] != nil {
			inits[n.Output[0]] = inits[n.Input[0]]
		}
	}
	out := map[string]*onnxpb.Tensor{}
	put := func(key string, tn *onnxpb.Tensor) {
		if old, ok := out[key]; ok && old != tn {
			t.Fatalf("%s: %s found twice", path, key)
		}
		out[key] = tn
	}
	for _, n := range m.Graph.Nodes {
		if n.OpType == "Identity" {
			continue
		}
		scope := strings.Split(strings.TrimPrefix(n.Name, "/"), "/")
		module := strings.Join(scope[:len(scope)-1], ".")
		for _, in := range n.Input {
			tn := inits[in]
			if tn == nil || tn.NumElements() <= 1 {
				continue
			}
			if !strings.HasPrefix(in, "onnx::") && !strings.Contains(in, "/") {
				put(in, tn)
				continue
			}
			switch n.OpType {
			case "MatMul":
				put(module+".weight", transposeRaw(tn))
			case "Mul":
				put(module+".weight", flat(tn))
			case "Add":
				put(module+".bias", flat(tn))
			}
		}
	}
	return out
}

// transposeRaw returns the 2-d float32 tensor t transposed, as RawData.
func transposeRaw(t *onnxpb.Tensor) *onnxpb.Tensor {
	r, c := t.Dims[0], t.Dims[1]
	src := floatData(t)
	raw := make([]byte, 4*r*c)
	for i := int64(0); i < r; i++ {
		for j := int64(0); j < c; j++ {
			binary.LittleEndian.PutUint32(raw[4*(j*r+i):], math.Float32bits(src[i*c+j]))
		}
	}
	return &onnxpb.Tensor{DataType: onnxpb.Float, Dims: []int64{c, r}, RawData: raw}
}

// flat returns t reshaped to one dimension.
func flat(t *onnxpb.Tensor) *onnxpb.Tensor {
	c := *t
	c.Dims = []int64{t.NumElements()}
	return &c
}

func floatData(t *onnxpb.Tensor) []float32 {
	if len(t.FloatData) > 0 {
		return t.FloatData
	}
	v := make([]float32, len(t.RawData)/4)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(t.RawData[4*i:]))
	}
	return v
}

// TestParitySDXL builds the tiny SDXL reference model's five graphs from
// its configs (model/*/config.json) and from the weights of its ONNX files
// (the export's initializers, mapped back to state-dict names), and checks
// that ONNX Runtime on the built graphs reproduces diffusers' PyTorch
// modules in reference.json: every text-encoder call of both runs
// (last_hidden_state, the penultimate hidden state SDXL uses, pooler_output
// and text_embeds), every UNet call (text_embeds and time_ids included),
// the VAE decode, and the VAE encoder's latent_parameters.
func TestParitySDXL(t *testing.T) {
	testenv.RequireORT(t)
	root := filepath.Join(testenv.SharedDir(t), "reference", "tiny-sdxl")
	model := filepath.Join(root, "model")
	text, text2, un, vae := readSDXLConfig(t, model, VAEDecoderDir)
	cfg := Config{Name: "tiny-sdxl-reference", Text: text, Text2: &text2, UNet: un, VAE: vae}
	if diff := cmp.Diff(TinySDXL().UNet, un); diff != "" {
		t.Errorf("TinySDXL's UNet differs from the reference's config (-TinySDXL +reference):\n%s", diff)
	}
	src := MapSource{
		TextEncoder:  onnxStateDict(t, filepath.Join(model, TextEncoderDir, ModelFile)),
		TextEncoder2: onnxStateDict(t, filepath.Join(model, TextEncoder2Dir, ModelFile)),
		UNet:         onnxStateDict(t, filepath.Join(model, UNetDir, ModelFile)),
		VAE:          onnxStateDict(t, filepath.Join(model, VAEDecoderDir, ModelFile)),
	}
	for k, v := range onnxStateDict(t, filepath.Join(model, VAEEncoderDir, ModelFile)) {
		src[VAE][k] = v
	}
	opt := Options{Source: src}
	g := buildAll(t, cfg, opt, 0)
	te, te2, unet, dec, enc := g.text, g.text2, g.unet, g.vaeDec, g.vaeEnc
	sessions := map[string]*ort.Session{
		TextEncoderDir:  openModel(t, TextEncoderDir, te, ""),
		TextEncoder2Dir: openModel(t, TextEncoder2Dir, te2, ""),
	}
	uns := openModel(t, UNetDir, unet, "")
	decs := openModel(t, VAEDecoderDir, dec, "")

	ref := testenv.LoadTinySDXLReference(t)
	var worst float64
	check := func(what string, got, want []float32) {
		worst = math.Max(worst, expectClose(t, what, got, want, parityTol))
	}
	for _, r := range ref.Runs {
		pt := r.Results.PyTorch
		for _, c := range pt.TextEncoderCalls {
			d, layers := text.Hidden, text.Layers
			var ids any = toInt32(c.InputIDs)
			if c.Encoder == TextEncoder2Dir {
				d, layers, ids = text2.Hidden, text2.Layers, c.InputIDs
			}
			s := sessions[c.Encoder]
			shapes := [][]int64{}
			for range s.Outputs() {
				shapes = append(shapes, nil)
			}
			outs := map[string][]float32{}
			res := run(t, s, []ort.Tensor{{Shape: []int64{1, 77}, Data: ids}}, shapes...)
			for i, o := range s.Outputs() {
				outs[o.Name] = res[i]
			}
			what := fmt.Sprintf("%s: %s %s", r.Case, c.Encoder, c.Role)
			check(what+" last_hidden_state", outs["last_hidden_state"], c.LastHiddenState)
			check(what+" penultimate hidden state", outs["hidden_states."+strconv.Itoa(layers-1)], c.PenultimateHiddenState)
			if c.Encoder == TextEncoder2Dir {
				check(what+" text_embeds", outs["text_embeds"], c.TextEmbeds)
			} else {
				check(what+" pooler_output", outs["pooler_output"], c.PoolerOutput)
			}
			if len(outs["last_hidden_state"]) != 77*d {
				t.Fatalf("%s: last_hidden_state of %d values", what, len(outs["last_hidden_state"]))
			}
		}
		shape := pt.SampleInputShape
		n := shape[0]
		var timeIDs []float32
		for _, row := range pt.AddTimeIDs {
			timeIDs = append(timeIDs, row...)
		}
		for i, s := range pt.Steps {
			out := run(t, uns, []ort.Tensor{
				{Shape: shape, Data: s.SampleInput},
				{Shape: []int64{1}, Data: []int64{int64(s.T)}}, // as optimum's ORT wrapper feeds it
				{Shape: []int64{n, 77, int64(cfg.crossDim())}, Data: pt.EncoderHiddenStates},
				{Shape: []int64{n, int64(un.TextEmbedsDim())}, Data: pt.AddTextEmbeds},
				{Shape: []int64{n, 6}, Data: timeIDs},
			}, shape)
			check(fmt.Sprintf("%s: unet step %d", r.Case, i), out[0], s.UNetOutput)
		}
		img := run(t, decs, []ort.Tensor{{Shape: pt.VAEDecoderInputShape, Data: pt.VAEDecoderInput}}, pt.VAEDecoderOutputShape)
		check(r.Case+": vae decoder", img[0], pt.VAEDecoderOutput)
	}
	x := numpyUniform(5, -1, 1, 3*64*64)
	par := run(t, openModel(t, VAEEncoderDir, enc, ""), []ort.Tensor{{Shape: []int64{1, 3, 64, 64}, Data: x}}, []int64{1, 8, 8, 8})
	check("vae encoder latent_parameters", par[0], ref.VAEEncoderCheck.PyTorch)
	t.Logf("largest difference to diffusers' PyTorch outputs: %.3g", worst)
}

// TestParityInpaint builds the 9-channel UNet of
// ../shared/reference/tiny-inpaint (legacy layout, channels dim symbolic as
// diffusers' exporter writes it) from its diffusers config and the weights
// of its ONNX export, checks the signature against onnx_signatures.json,
// and reproduces every UNet call of diffusers' PyTorch inpainting run
// (latents ‖ mask ‖ masked-image latents). Its text encoder and VAE are
// tiny-onnx-sd's, checked by TestParitySD1.
func TestParityInpaint(t *testing.T) {
	testenv.RequireORT(t)
	root := filepath.Join(testenv.SharedDir(t), "reference", "tiny-inpaint")
	var tc struct {
		Full map[string]json.RawMessage `json:"full_configs"`
	}
	shareddir.ReadJSON(t, filepath.Join(root, "torch_model_configs.json"), &tc)
	un, err := ParseUNetConfig(tc.Full["unet"])
	if err != nil {
		t.Fatal(err)
	}
	text, err := ParseTextConfig(tc.Full["text_encoder"], false)
	if err != nil {
		t.Fatal(err)
	}
	if un.InChannels != 9 {
		t.Fatalf("in_channels %d", un.InChannels)
	}
	cfg := Config{Name: "tiny-inpaint-reference", Text: text, UNet: un, VAE: TinyInpaint().VAE}
	opt := Options{Source: MapSource{UNet: onnxStateDict(t, filepath.Join(root, "model", UNetDir, ModelFile))}, ChannelsDim: true}
	m, err := BuildUNet(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	var sigs map[string]refSignature
	shareddir.ReadJSON(t, filepath.Join(root, "onnx_signatures.json"), &sigs)
	got := append(signatureOf(m.Graph.Input, "in"), signatureOf(m.Graph.Output, "out")...)
	want := sigs[UNetDir].lines()
	// The exporter names output dims after torch's nodes
	// ("Convout_sample_dim_0"): compare outputs by name, dtype and rank.
	rank := func(l string) string { return l[:strings.Index(l, "[")] + strconv.Itoa(strings.Count(l, ",")) }
	for i := range want {
		if i >= len(got) || (strings.HasPrefix(want[i], "in ") && got[i] != want[i]) || rank(got[i]) != rank(want[i]) {
			t.Errorf("signature (-legacy exporter +generated):\n%s", cmp.Diff(want, got))
			break
		}
	}
	pt := testenv.LoadTinyInpaintReference(t).Results.PyTorch
	ehs := append(append([]float32{}, pt.TextEncoderCalls[1].LastHiddenState...), pt.TextEncoderCalls[0].LastHiddenState...) // [uncond; cond]
	s := openModel(t, UNetDir, m, "")
	n := pt.SampleInputShape[0]
	var worst float64
	for i, st := range pt.Steps {
		ts := make([]float32, n)
		for j := range ts {
			ts[j] = st.TimestepInput[0]
		}
		out := run(t, s, []ort.Tensor{
			{Shape: pt.SampleInputShape, Data: st.SampleInput},
			{Shape: []int64{n}, Data: ts},
			{Shape: []int64{n, 77, int64(text.Hidden)}, Data: ehs},
		}, pt.UNetOutputShape)
		worst = math.Max(worst, expectClose(t, fmt.Sprintf("unet step %d", i), out[0], st.UNetOutput, parityTol))
	}
	t.Logf("%d UNet calls, largest difference to diffusers' PyTorch outputs %.3g", len(pt.Steps), worst)
}

func toInt32(v []int64) []int32 {
	out := make([]int32, len(v))
	for i, x := range v {
		out[i] = int32(x)
	}
	return out
}
