package ckpt

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Embedding is a textual-inversion embedding: vectors that stand for a word
// in prompts. A1111 names it after its file (without extension). It is
// immutable and safe for concurrent use.
type Embedding struct {
	Name string
	Path string
	// Vectors holds, per text-encoder width, the embedding's vectors
	// ([n][width]): one width for SD 1.x/2.x embeddings, two for SDXL ones
	// (clip_l 768 and clip_g 1280).
	Vectors map[int][][]float32
}

// Len returns the number of vectors (tokens) the embedding takes.
func (e *Embedding) Len() int {
	for _, v := range e.Vectors {
		return len(v)
	}
	return 0
}

// LoadEmbedding reads a textual-inversion file: AUTOMATIC1111's
// .safetensors (emb_params) or .pt (string_to_param, read by the
// restricted unpickler; the original textual-inversion code's files too),
// SDXL embeddings (clip_l and clip_g), and diffusers' learned_embeds (a
// single tensor named after its token).
func LoadEmbedding(path string) (*Embedding, error) {
	f, err := Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	base := filepath.Base(path)
	e := &Embedding{Name: strings.TrimSuffix(base, filepath.Ext(base)), Path: path, Vectors: map[int][][]float32{}}
	var keys []string
	if _, ok := f.Lookup("clip_l"); ok {
		keys = []string{"clip_l", "clip_g"}
	} else if _, ok := f.Lookup("emb_params"); ok {
		keys = []string{"emb_params"}
	} else {
		var params []string
		for _, t := range f.Tensors {
			if strings.HasPrefix(t.Name, "string_to_param.") {
				params = append(params, t.Name)
			}
		}
		switch {
		case len(params) == 1:
			keys = params
		case len(params) > 1:
			return nil, fmt.Errorf("ckpt: embedding %s holds %d placeholders (%v); one is supported", path, len(params), params)
		case len(f.Tensors) == 1 && f.Tensors[0].DType.IsFloat():
			keys = []string{f.Tensors[0].Name} // diffusers' learned_embeds: {token: vector}
		default:
			return nil, fmt.Errorf("ckpt: %s is not a textual-inversion embedding (no emb_params, string_to_param or clip_l/clip_g)", path)
		}
	}
	n := -1
	for _, k := range keys {
		t, ok := f.Lookup(k)
		if !ok {
			return nil, fmt.Errorf("ckpt: embedding %s has no %s", path, k)
		}
		shape := slices.Clone(t.Shape)
		if len(shape) == 1 {
			shape = []int64{1, shape[0]}
		}
		if len(shape) != 2 || shape[0] <= 0 || shape[0] > 75 || shape[1] <= 0 {
			return nil, fmt.Errorf("ckpt: embedding %s: %s has shape %v, want [vectors ≤ 75, width]", path, k, t.Shape)
		}
		if n >= 0 && int(shape[0]) != n {
			return nil, fmt.Errorf("ckpt: embedding %s: clip_l and clip_g have %d and %d vectors", path, n, shape[0])
		}
		n = int(shape[0])
		vals, err := f.Float32s(k)
		if err != nil {
			return nil, err
		}
		w := int(shape[1])
		if _, dup := e.Vectors[w]; dup {
			return nil, fmt.Errorf("ckpt: embedding %s: two sets of width %d", path, w)
		}
		vs := make([][]float32, n)
		for i := range vs {
			vs[i] = vals[i*w : (i+1)*w]
		}
		e.Vectors[w] = vs
	}
	return e, nil
}
