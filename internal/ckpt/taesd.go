package ckpt

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/onnxpb"
	"github.com/sdpipe/sdpipe/internal/safetensors"
)

// TAESD is the component of TAESD weights: diffusers' AutoencoderTiny,
// whose parameter names ("decoder.layers.N…", "encoder.layers.N…") the
// graphs are built with.
const TAESD = Component(modelgen.TAESD)

// TAESDHalf is one half of the tiny autoencoder TAESD found in a file of
// weights: its architecture and where its parameters lie.
type TAESDHalf struct {
	Decoder bool // the decoder, else the encoder
	// Config is the architecture read from the tensors' names and shapes
	// (the other half's block counts are a placeholder).
	Config modelgen.TAESDConfig
	// Params maps diffusers' AutoencoderTiny names to the file's tensors.
	Params map[string]Param
}

// taesdPrefixes are the key layouts of TAESD files: diffusers'
// AutoencoderTiny (diffusion_pytorch_model.safetensors), ComfyUI's
// combined files, and madebyollin's TAESD module, whose decoder
// nn.Sequential starts with the Clamp (numbered one higher than diffusers'
// DecoderTiny, which applies the clamp in forward). madebyollin's own
// taesd_encoder and taesd_decoder files have bare keys ("0.weight",
// "1.conv.0.weight"), told apart by the decoder's missing layer 0.
var taesdPrefixes = []struct {
	prefix  string
	decoder bool
	shift   int
}{
	{"encoder.layers.", false, 0}, {"decoder.layers.", true, 0},
	{"taesd_encoder.", false, 0}, {"taesd_decoder.", true, -1},
	{"encoder.", false, 0}, {"decoder.", true, -1},
}

// taesdIgnored are tensors of TAESD files that are not the networks'
// (ComfyUI's latent scale and shift).
var taesdIgnored = []string{"vae_scale", "vae_shift"}

// DetectTAESD reads the TAESD halves a file's tensors hold (one or both)
// from their names and shapes. Keys of another model are an error naming
// them.
func DetectTAESD(ts []safetensors.Info) ([]*TAESDHalf, error) {
	type layer map[string]safetensors.Info // rest of the key after the index
	halves := map[bool]map[int]layer{}
	var bare map[int]layer
	var unknown []string
	add := func(m map[int]layer, idx int, rest string, t safetensors.Info) {
		if m[idx] == nil {
			m[idx] = layer{}
		}
		m[idx][rest] = t
	}
	for _, t := range ts {
		if slices.Contains(taesdIgnored, t.Name) {
			continue
		}
		placed := false
		for _, p := range taesdPrefixes {
			s, ok := strings.CutPrefix(t.Name, p.prefix)
			if !ok {
				continue
			}
			idx, rest, ok := splitIndex(s)
			if !ok {
				break
			}
			if halves[p.decoder] == nil {
				halves[p.decoder] = map[int]layer{}
			}
			add(halves[p.decoder], idx+p.shift, rest, t)
			placed = true
			break
		}
		if placed {
			continue
		}
		if idx, rest, ok := splitIndex(t.Name); ok {
			if bare == nil {
				bare = map[int]layer{}
			}
			add(bare, idx, rest, t)
			continue
		}
		unknown = append(unknown, t.Name)
	}
	if len(unknown) > 0 {
		return nil, keysErr("not a TAESD file: keys of no TAESD layout", unknown)
	}
	if bare != nil {
		dec := bare[0] == nil // the decoder's layer 0 is the clamp, which has no weights
		if halves[dec] != nil {
			return nil, keysErr("a TAESD file with bare keys and prefixed keys of the same half", slices.Collect(maps.Keys(bare[slices.Min(slices.Collect(maps.Keys(bare)))])))
		}
		shift := 0
		if dec {
			shift = -1
		}
		halves[dec] = map[int]layer{}
		for i, l := range bare {
			halves[dec][i+shift] = l
		}
	}
	var out []*TAESDHalf
	for _, dec := range []bool{true, false} {
		layers := halves[dec]
		if layers == nil {
			continue
		}
		h, err := taesdHalf(dec, func(i int) (map[string]safetensors.Info, bool) { l, ok := layers[i]; return l, ok }, slices.Max(slices.Collect(maps.Keys(layers))))
		if err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	if len(out) == 0 {
		return nil, errors.New("ckpt: not a TAESD file: no tensors")
	}
	return out, nil
}

// taesdHalf reads one half's architecture from its layers (diffusers'
// numbering, last the highest index): the encoder is conv(3→c), blocks,
// then per level a bias-free stride-2 conv and blocks, then conv(c→latent);
// the decoder conv(latent→c), ReLU (layer 1), then per level blocks and an
// upsample with a bias-free conv, then conv(c→3). Block counts come from
// the layers present; the graph built from them checks every shape.
func taesdHalf(dec bool, layer func(int) (map[string]safetensors.Info, bool), last int) (*TAESDHalf, error) {
	name := "encoder"
	if dec {
		name = "decoder"
	}
	h := &TAESDHalf{Decoder: dec, Params: map[string]Param{}}
	first, ok := layer(0)
	if !ok || len(first["weight"].Shape) != 4 {
		return nil, fmt.Errorf("ckpt: TAESD %s: no first conv (layer 0)", name)
	}
	w := first["weight"].Shape
	c, in := int(w[0]), int(w[1])
	blocks := []int{0}
	for i := 1; i < last; i++ {
		l, ok := layer(i)
		switch {
		case !ok: // ReLU or Upsample
		case l["conv.0.weight"].Name != "":
			if l["skip.weight"].Name != "" {
				return nil, fmt.Errorf("ckpt: TAESD %s layer %d: a block with a skip conv (unequal channels) is not supported", name, i)
			}
			blocks[len(blocks)-1]++
		case l["weight"].Name != "" && l["bias"].Name == "":
			blocks = append(blocks, 0) // the next level's bias-free conv
		default:
			return nil, fmt.Errorf("ckpt: TAESD %s layer %d: unexpected tensors %v", name, i, slices.Sorted(maps.Keys(l)))
		}
	}
	lastL, ok := layer(last)
	if !ok || len(lastL["weight"].Shape) != 4 {
		return nil, fmt.Errorf("ckpt: TAESD %s: no last conv (layer %d)", name, last)
	}
	outCh := int(lastL["weight"].Shape[0])
	if dec {
		h.Config = modelgen.TAESDConfig{Name: "taesd", Channels: c, LatentChannels: in, DecoderBlocks: blocks, EncoderBlocks: []int{0}}
		if outCh != 3 {
			return nil, fmt.Errorf("ckpt: TAESD decoder: last conv gives %d channels, want 3", outCh)
		}
	} else {
		h.Config = modelgen.TAESDConfig{Name: "taesd", Channels: c, LatentChannels: outCh, EncoderBlocks: blocks, DecoderBlocks: []int{0}}
		if in != 3 {
			return nil, fmt.Errorf("ckpt: TAESD encoder: first conv takes %d channels, want 3", in)
		}
	}
	for i := 0; i <= last; i++ {
		l, _ := layer(i)
		for rest, t := range l {
			h.Params[name+".layers."+strconv.Itoa(i)+"."+rest] = Param{Key: t.Name, Shape: t.Shape}
		}
	}
	return h, nil
}

// BuiltTAESD is TAESD weights built into ONNX graphs in the cache.
type BuiltTAESD struct {
	Dir     string // the folder
	Decoder string // vae_decoder/model.onnx in Dir
	Encoder string // vae_encoder/model.onnx in Dir, "" when no file held the encoder
	Cached  bool   // found in the cache, nothing was built
	Copied  bool   // the files were copied into the cache, not hard-linked
}

// BuildTAESD builds the TAESD halves in the weight files at paths (a
// decoder file and optionally an encoder file, or one file holding both;
// safetensors or PyTorch) into a folder in the cache: vae_decoder/ and
// vae_encoder/ (model.onnx each, taking and giving pixels in [-1, 1] and
// latents as the UNet has them, as diffusers' AutoencoderTiny), whose
// weights refer to the files' own bytes through hard links (copies on
// another file system), or returns the folder an earlier call made for the
// same files. Only opt.CacheDir ("" means <cache>/taesd) and opt.Logger
// apply. It is safe for concurrent use, across processes too.
func BuildTAESD(ctx context.Context, paths []string, opt BuildOptions) (_ *BuiltTAESD, err error) {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	type half struct {
		f *File
		h *TAESDHalf
	}
	got := map[bool]half{}
	hash := sha256.New()
	fmt.Fprintln(hash, buildVersion, "taesd-1")
	for _, p := range paths {
		f, err := Open(p)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		hs, err := DetectTAESD(f.Tensors)
		if err != nil {
			return nil, fmt.Errorf("%w (%s)", err, p)
		}
		q, err := quickHash(f)
		if err != nil {
			return nil, err
		}
		hash.Write(q)
		for _, h := range hs {
			if o, dup := got[h.Decoder]; dup {
				return nil, fmt.Errorf("ckpt: TAESD: %s and %s both hold the %s", o.f.Path(), p, halfName(h.Decoder))
			}
			got[h.Decoder] = half{f, h}
			fmt.Fprintf(hash, "%v %+v\n", h.Decoder, h.Config)
		}
	}
	if _, ok := got[true]; !ok {
		return nil, fmt.Errorf("ckpt: TAESD: no decoder in %v", paths)
	}
	root := opt.CacheDir
	if root == "" {
		root = filepath.Join(cachedir.Dir(), "taesd")
	}
	b := &BuiltTAESD{Dir: filepath.Join(root, hex.EncodeToString(hash.Sum(nil))[:32])}
	b.Decoder = filepath.Join(b.Dir, modelgen.VAEDecoderDir, modelgen.ModelFile)
	if _, ok := got[false]; ok {
		b.Encoder = filepath.Join(b.Dir, modelgen.VAEEncoderDir, modelgen.ModelFile)
	}
	if _, err := os.Stat(filepath.Join(b.Dir, doneFile)); err == nil {
		b.Cached = true
		return b, nil
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	tmp, err := os.MkdirTemp(root, ".build-")
	if err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	defer os.RemoveAll(tmp) // a no-op once renamed
	firsts := map[*File]string{}
	for _, dec := range []bool{true, false} {
		hf, ok := got[dec]
		if !ok {
			continue
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		dir := modelgen.VAEEncoderDir
		build := modelgen.BuildTAESDEncoder
		if dec {
			dir, build = modelgen.VAEDecoderDir, modelgen.BuildTAESDDecoder
		}
		p := filepath.Join(tmp, dir)
		if err := os.MkdirAll(p, 0o755); err != nil {
			return nil, fmt.Errorf("ckpt: %w", err)
		}
		loc, cp, err := linkInto(p, hf.f.Path(), firsts[hf.f])
		if err != nil {
			return nil, err
		}
		if firsts[hf.f] == "" {
			firsts[hf.f] = filepath.Join(p, loc)
		}
		b.Copied = b.Copied || cp
		src := NewSource(hf.f, &Mapping{Params: map[Component]map[string]Param{TAESD: hf.h.Params}}, nil, nil, nil, map[Component]string{TAESD: loc})
		m, err := build(hf.h.Config, modelgen.Options{Source: src})
		if err != nil {
			return nil, fmt.Errorf("ckpt: building the TAESD %s from %s: %w", halfName(dec), hf.f.Path(), err)
		}
		if unused := src.Unused(TAESD); len(unused) > 0 {
			return nil, keysErr(fmt.Sprintf("%d tensors of %s were not used by the TAESD %s graph", len(unused), hf.f.Path(), halfName(dec)), unused)
		}
		if err := onnxpb.WriteFile(filepath.Join(p, modelgen.ModelFile), m, &onnxpb.ExternalData{File: onnxpb.LegacyExternalFile, Threshold: 1024}); err != nil {
			return nil, fmt.Errorf("ckpt: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(tmp, doneFile), []byte(strings.Join(paths, "\n")+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("ckpt: %w", err)
	}
	if err := os.Rename(tmp, b.Dir); err != nil {
		if _, serr := os.Stat(filepath.Join(b.Dir, doneFile)); serr != nil {
			return nil, fmt.Errorf("ckpt: %w", err)
		}
		b.Cached = true
	}
	log.Info("ckpt: built TAESD graphs", "files", paths, "dir", b.Dir)
	return b, nil
}

func halfName(dec bool) string {
	if dec {
		return "decoder"
	}
	return "encoder"
}

// WriteTAESDFiles writes madebyollin's two TAESD files of architecture tc
// into dir, taesd_encoder.safetensors and taesd_decoder.safetensors (bare
// keys, the decoder numbered from 1), with the random weights
// modelgen.WriteTAESD gives a folder for seed, stored as dtype (F32, F16 or
// BF16), and returns their paths.
func WriteTAESDFiles(dir string, tc modelgen.TAESDConfig, seed uint64, dtype safetensors.DType) (enc, dec string, err error) {
	rec := &recorder{src: modelgen.RandomSource{Seed: seed}, got: map[Component]map[string]*onnxpb.Tensor{}}
	opt := modelgen.Options{Seed: seed, Source: rec}
	if _, err := modelgen.BuildTAESDEncoder(tc, opt); err != nil {
		return "", "", err
	}
	if _, err := modelgen.BuildTAESDDecoder(tc, opt); err != nil {
		return "", "", err
	}
	files := map[string][]safetensors.WriteTensor{}
	for name, t := range rec.got[TAESD] {
		file, key := "taesd_encoder.safetensors", strings.TrimPrefix(name, "encoder.layers.")
		if rest, ok := strings.CutPrefix(name, "decoder.layers."); ok {
			idx, tail, _ := splitIndex(rest)
			file, key = "taesd_decoder.safetensors", strconv.Itoa(idx+1)+"."+tail
		}
		raw := make([]byte, t.NumElements()*4)
		t.Fill(raw)
		files[file] = append(files[file], safetensors.WriteTensor{Name: key, DType: dtype, Shape: t.Dims,
			Data: safetensors.FromFloat32(dtype, safetensors.ToFloat32(safetensors.F32, raw))})
	}
	enc, dec = filepath.Join(dir, "taesd_encoder.safetensors"), filepath.Join(dir, "taesd_decoder.safetensors")
	for name, ws := range files {
		if err := safetensors.WriteFile(filepath.Join(dir, name), ws, nil); err != nil {
			return "", "", err
		}
	}
	return enc, dec, nil
}
