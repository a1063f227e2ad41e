package modelgen

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/testenv"
)

// ckptSource wraps RandomSource like a checkpoint reader would: each
// parameter's values (in PyTorch layout, converted to typ) are appended to
// one flat file, after a header of odd length so that offsets are not
// aligned (as in safetensors), and returned as an external reference into
// that file.
type ckptSource struct {
	rand RandomSource
	typ  onnxpb.DataType
	loc  string

	mu   sync.Mutex
	data []byte
}

func newCkptSource(seed uint64, typ onnxpb.DataType, loc string) *ckptSource {
	return &ckptSource{rand: RandomSource{Seed: seed, Type: typ}, typ: typ, loc: loc, data: make([]byte, 1001)}
}

func (s *ckptSource) Param(c Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error) {
	t, err := s.rand.Param(c, name, shape, init)
	if err != nil {
		return nil, err
	}
	n := t.NumElements() * int64(s.typ.Size())
	s.mu.Lock()
	defer s.mu.Unlock()
	off := int64(len(s.data))
	s.data = append(s.data, make([]byte, n)...)
	t.Fill(s.data[off:])
	return onnxpb.ExternalRef("ignored", s.typ, shape, s.loc, off, n)
}

func (s *ckptSource) write(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, s.data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeComponents writes the tiny text encoder, UNet and VAE decoder into
// dir/<component>/model.onnx (weights inline or as the Source gives them).
func writeComponents(t *testing.T, dir string, opt Options) {
	t.Helper()
	cfg := Tiny()
	vocab := GenerateVocabulary(0).Size()
	te, err := BuildTextEncoder(cfg, opt, vocab)
	if err != nil {
		t.Fatal(err)
	}
	un, err := BuildUNet(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := BuildVAEDecoder(cfg, opt)
	if err != nil {
		t.Fatal(err)
	}
	for c, m := range map[string]*onnxpb.Model{TextEncoderDir: te, UNetDir: un, VAEDecoderDir: dec} {
		if err := os.MkdirAll(filepath.Join(dir, c), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := onnxpb.WriteFile(filepath.Join(dir, c, ModelFile), m, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// tinyOutputs runs the text encoder, the UNet and the VAE decoder of dir on
// fixed inputs.
func tinyOutputs(t *testing.T, dir string) (text, eps, img []float32) {
	t.Helper()
	ids, _ := promptIDs(GenerateVocabulary(0).Size(), 5)
	out := []ort.Tensor{{Shape: []int64{1, 77, 32}}, {Shape: []int64{1, 32}}}
	if err := openComponent(t, dir, TextEncoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 77}, Data: ids}}, out); err != nil {
		t.Fatal(err)
	}
	text = out[0].Data.([]float32)
	eps = runUNet(t, openComponent(t, dir, UNetDir), gauss(1, 2*4*8*8), 501, append(append([]float32{}, text...), text...), 2, 8, 77, 32)
	dout := []ort.Tensor{{Shape: []int64{1, 3, 64, 64}}}
	if err := openComponent(t, dir, VAEDecoderDir).Run(t.Context(), []ort.Tensor{{Shape: []int64{1, 4, 8, 8}, Data: gauss(2, 256)}}, dout); err != nil {
		t.Fatal(err)
	}
	return text, eps, dout[0].Data.([]float32)
}

// TestExternalSource builds the tiny components from a Source that returns
// references into a flat checkpoint-like file (float32, float16, bfloat16;
// unaligned offsets), and checks that ONNX Runtime computes exactly what
// the same weights held in the model compute, that no weight is copied
// into the model files, and that the file is reachable through a hard link
// from another folder.
func TestExternalSource(t *testing.T) {
	testenv.RequireORT(t)
	for _, typ := range []onnxpb.DataType{onnxpb.Float, onnxpb.Float16, onnxpb.BFloat16} {
		t.Run(typ.String(), func(t *testing.T) {
			// Reference: the same values held in the model (cast in the
			// graph when they are not float32).
			inline := t.TempDir()
			writeComponents(t, inline, Options{Source: RandomSource{Seed: 9, Type: typ}})
			wantText, wantEps, wantImg := tinyOutputs(t, inline)

			// The checkpoint lies in its own folder; the graphs reference it
			// through a hard link in each component folder.
			ckptDir, model := t.TempDir(), t.TempDir()
			src := newCkptSource(9, typ, "tiny.ckpt")
			writeComponents(t, model, Options{Source: src})
			ckpt := filepath.Join(ckptDir, "tiny.ckpt")
			src.write(t, ckpt)
			var size int64
			for _, c := range []string{TextEncoderDir, UNetDir, VAEDecoderDir} {
				loc, err := onnxpb.LinkFile(filepath.Join(model, c), ckpt)
				if err != nil {
					t.Skipf("no hard links here: %v", err)
				}
				if loc != "tiny.ckpt" {
					t.Fatalf("link named %q", loc)
				}
				st, err := os.Stat(filepath.Join(model, c, ModelFile))
				if err != nil {
					t.Fatal(err)
				}
				size += st.Size()
				io, err := onnxpb.ReadIO(filepath.Join(model, c, ModelFile))
				if err != nil {
					t.Fatal(err)
				}
				for _, in := range io.Initializers {
					if len(in.Dims) >= 2 && !in.External() && !strings.HasPrefix(in.Name, "const/") {
						t.Errorf("%s: weight %s copied into the model", c, in.Name)
					}
				}
			}
			t.Logf("%s: checkpoint %d bytes, the three model files %d bytes", typ, len(src.data), size)
			if size > int64(len(src.data))/10 {
				t.Errorf("model files hold %d bytes for a %d-byte checkpoint", size, len(src.data))
			}
			text, eps, img := tinyOutputs(t, model)
			for _, c := range []struct {
				name      string
				got, want []float32
			}{{"text encoder", text, wantText}, {"unet", eps, wantEps}, {"vae decoder", img, wantImg}} {
				// Same values, same arithmetic up to the MatMul's operand
				// layout: float32 reassociation at most.
				if d := maxAbsDiff(c.got, c.want); d > 1e-5 {
					t.Errorf("%s: external weights differ from inline ones by %.3g", c.name, d)
				}
			}
		})
	}
}

// TestORTRefusesEscapingLinks records why LinkFile makes hard links: ONNX
// Runtime 1.29 resolves a symbolic link in the model's folder and refuses
// external data that lies outside it, while a hard link, or loading the
// model from bytes with the file's own folder as the external-data folder,
// works.
func TestORTRefusesEscapingLinks(t *testing.T) {
	testenv.RequireORT(t)
	ckptDir, model := t.TempDir(), t.TempDir()
	src := newCkptSource(3, onnxpb.Float, "tiny.ckpt")
	m, err := BuildVAEDecoder(Tiny(), Options{Source: src})
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(ckptDir, "tiny.ckpt")
	src.write(t, ckpt)
	path := filepath.Join(model, ModelFile)
	if err := onnxpb.WriteFile(path, m, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(ckpt, filepath.Join(model, "tiny.ckpt")); err != nil {
		t.Skipf("no symbolic links: %v", err)
	}
	ins, outs, err := ort.ReadIO(path)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{}); err == nil {
		s.Close()
		t.Error("ONNX Runtime accepted a symbolic link leaving the model's folder: LinkFile could use one")
	} else {
		t.Logf("symbolic link refused: %v", err)
	}
	// From bytes, with the checkpoint's folder as the external-data folder.
	openModel(t, "from bytes", m, ckptDir)
	// Through a hard link.
	if err := os.Remove(filepath.Join(model, "tiny.ckpt")); err != nil {
		t.Fatal(err)
	}
	if _, err := onnxpb.LinkFile(model, ckpt); err != nil {
		t.Skipf("no hard links: %v", err)
	}
	s, err := ort.Open(t.Context(), path, ins, outs, ort.Options{})
	if err != nil {
		t.Fatalf("hard link refused: %v", err)
	}
	s.Close()
}

// TestSourceErrors checks that what a Source gets wrong is a build error
// naming the parameter, never a panic.
func TestSourceErrors(t *testing.T) {
	cfg := Tiny()
	// A source holding every UNet parameter but one.
	full := MapSource{UNet: {}}
	rec := recordSource{to: full, src: RandomSource{}}
	if _, err := BuildUNet(cfg, Options{Source: rec}); err != nil {
		t.Fatal(err)
	}
	const missing = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
	if full[UNet][missing] == nil {
		t.Fatalf("the UNet has no %s", missing)
	}
	delete(full[UNet], missing)
	_, err := BuildUNet(cfg, Options{Source: full})
	if err == nil || !errors.Is(err, ErrNoParam) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing parameter: %v", err)
	}
	if _, err := BuildTextEncoder(cfg, Options{Source: full}, 100); err == nil || !strings.Contains(err.Error(), "text_model.embeddings.token_embedding.weight") {
		t.Errorf("text encoder from a UNet-only source: %v", err)
	}

	bad := func(name string, edit func(*onnxpb.Tensor) *onnxpb.Tensor) Source {
		return editSource{name: name, edit: edit}
	}
	const w = "conv_in.weight"
	for _, tt := range []struct {
		what string
		src  Source
		want string
	}{
		{"wrong shape", bad(w, func(t *onnxpb.Tensor) *onnxpb.Tensor { t.Dims = []int64{32, 4, 3}; return t }), "shape"},
		{"int tensor", bad(w, func(t *onnxpb.Tensor) *onnxpb.Tensor { t.DataType = onnxpb.Int32; return t }), "element type"},
		{"nil tensor", bad(w, func(*onnxpb.Tensor) *onnxpb.Tensor { return nil }), "no tensor"},
		{"transposed linear", bad("time_embedding.linear_1.weight", func(t *onnxpb.Tensor) *onnxpb.Tensor {
			t.Dims = []int64{t.Dims[1], t.Dims[0]}
			return t
		}), "shape"},
	} {
		_, err := BuildUNet(cfg, Options{Source: tt.src})
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "unet parameter") {
			t.Errorf("%s: %v", tt.what, err)
		}
	}
	hookErr := errors.New("hook says no")
	_, err = BuildVAEDecoder(cfg, Options{OnModule: func(b *Builder, m Module, x, y string) (string, error) {
		if m.Name == "decoder.conv_out" {
			return "", hookErr
		}
		return y, nil
	}})
	if !errors.Is(err, hookErr) || !strings.Contains(err.Error(), "decoder.conv_out") {
		t.Errorf("hook error: %v", err)
	}
}

// recordSource stores what src returns in to[component].
type recordSource struct {
	to  MapSource
	src Source
}

func (r recordSource) Param(c Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error) {
	t, err := r.src.Param(c, name, shape, init)
	if err == nil {
		r.to[c][name] = t
	}
	return t, err
}

// editSource is RandomSource with one parameter changed by edit.
type editSource struct {
	name string
	edit func(*onnxpb.Tensor) *onnxpb.Tensor
}

func (e editSource) Param(c Component, name string, shape []int64, init Init) (*onnxpb.Tensor, error) {
	t, err := RandomSource{}.Param(c, name, shape, init)
	if name == e.name {
		t = e.edit(t)
	}
	return t, err
}

// TestOnModule checks that the hook sees every Linear and Conv module with
// its sizes, and that what it returns replaces the module's output in the
// graph.
func TestOnModule(t *testing.T) {
	cfg := Tiny()
	seen := map[Component]map[string]Module{}
	hook := func(b *Builder, m Module, x, y string) (string, error) {
		if seen[m.Component] == nil {
			seen[m.Component] = map[string]Module{}
		}
		if _, dup := seen[m.Component][m.Name]; dup {
			t.Errorf("module %s seen twice", m.Name)
		}
		seen[m.Component][m.Name] = m
		return y, nil
	}
	opt := Options{OnModule: hook}
	models := map[Component][]*onnxpb.Model{}
	g := buildAll(t, cfg, opt, GenerateVocabulary(0).Size())
	models[TextEncoder], models[UNet], models[VAE] = []*onnxpb.Model{g.text}, []*onnxpb.Model{g.unet}, []*onnxpb.Model{g.vaeDec, g.vaeEnc}
	for c, ms := range models {
		// Every weight of rank 4 (conv) or rank 2 other than an embedding
		// (linear) belongs to a module the hook saw, with that shape.
		n := 0
		for _, m := range ms {
			for _, in := range m.Graph.Initializer {
				name, ok := strings.CutSuffix(in.Name, ".weight")
				if !ok || strings.Contains(name, "embeddings.") || (len(in.Dims) != 2 && len(in.Dims) != 4) {
					continue
				}
				n++
				mod, ok := seen[c][name]
				switch {
				case !ok:
					t.Errorf("%s: no hook call for %s", c, name)
				case len(in.Dims) == 4 && (mod.Kind != Conv || in.Dims[0] != int64(mod.Out) || in.Dims[1] != int64(mod.In) || in.Dims[2] != int64(mod.Kernel)):
					t.Errorf("%s: %s %v reported as %+v", c, name, in.Dims, mod)
				case len(in.Dims) == 2 && (mod.Kind != Linear || in.Dims[0] != int64(mod.In) || in.Dims[1] != int64(mod.Out)):
					t.Errorf("%s: %s stored %v reported as %+v", c, name, in.Dims, mod)
				}
			}
		}
		if n != len(seen[c]) || n == 0 {
			t.Errorf("%s: %d Linear/Conv weights, %d hook calls", c, n, len(seen[c]))
		}
	}
	if m := seen[UNet]["down_blocks.0.downsamplers.0.conv"]; m.Stride != 2 || m.Pad != 1 || m.Kernel != 3 {
		t.Errorf("downsampler reported as %+v", m)
	}
	if m := seen[VAE]["encoder.down_blocks.0.downsamplers.0.conv"]; m.Pad != -1 {
		t.Errorf("asymmetrically padded conv reported as %+v", m)
	}

	// In ONNX Runtime: a per-request branch on every to_q (an added input,
	// as a LoRA fed per request would be) changes nothing when fed zeros,
	// and doubling conv_out doubles the noise prediction.
	testenv.RequireORT(t)
	plain, hooked := t.TempDir(), t.TempDir()
	if err := Write(plain, cfg, Options{}); err != nil {
		t.Fatal(err)
	}
	var branches []string
	err := Write(hooked, cfg, Options{OnModule: func(b *Builder, m Module, x, y string) (string, error) {
		switch {
		case m.Component == UNet && strings.HasSuffix(m.Name, ".to_q"):
			in := b.Input("delta."+m.Name, b.Float(), m.In, m.Out)
			branches = append(branches, in)
			return b.Op("Add", []string{y, b.Op("MatMul", []string{x, in})}), nil
		case m.Name == "conv_out":
			return b.Op("Mul", []string{y, b.Scalar(2)}), nil
		}
		return y, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	sample, ehs := gauss(3, 2*4*8*8), gauss(4, 2*77*32)
	want := runUNet(t, openComponent(t, plain, UNetDir), sample, 301, ehs, 2, 8, 77, 32)
	s := openComponent(t, hooked, UNetDir)
	run := func(delta float32) []float32 {
		in := []ort.Tensor{
			{Shape: []int64{2, 4, 8, 8}, Data: sample},
			{Shape: []int64{2}, Data: []float32{301, 301}},
			{Shape: []int64{2, 77, 32}, Data: ehs},
		}
		for _, inf := range s.Inputs()[3:] {
			d := make([]float32, inf.Shape[0]*inf.Shape[1])
			for i := range d {
				d[i] = delta
			}
			in = append(in, ort.Tensor{Shape: inf.Shape, Data: d})
		}
		out := []ort.Tensor{{Shape: []int64{2, 4, 8, 8}}}
		if err := s.Run(t.Context(), in, out); err != nil {
			t.Fatal(err)
		}
		return out[0].Data.([]float32)
	}
	if len(s.Inputs()) != 3+len(branches) || len(branches) == 0 {
		t.Fatalf("hooked UNet has %d inputs for %d branches", len(s.Inputs()), len(branches))
	}
	got := run(0)
	for i := range want {
		want[i] *= 2
	}
	if d := maxAbsDiff(got, want); d > 1e-5 {
		t.Errorf("zero branches and doubled conv_out: differs from 2× the plain UNet by %.3g", d)
	}
	if d := maxAbsDiff(run(0.01), got); d < 1e-4 {
		t.Errorf("non-zero branches change the output by only %.3g", d)
	}
}
