package sd

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/ckptrun"
	"github.com/sdpipe/sdpipe/internal/modellib"
	"github.com/sdpipe/sdpipe/pipeline"
)

// fileHashes computes A1111's file hashes once per file (by path, size and
// modification time), cached on disk beside the other derived files.
var fileHashes = sync.OnceValue(func() *modellib.Hashes {
	return modellib.NewHashes(filepath.Join(cachedir.Dir(), "hashes.json"))
})

// ModelFile is a file of a Model's LoRA or embeddings folder that requests
// may name, or a model of a models folder (ListModels).
type ModelFile struct {
	// Name is what a prompt writes: <lora:Name:0.8>, or the embedding's
	// Name itself.
	Name string
	Path string
	// Vectors and Width are an embedding's token count and vector width
	// (the first text encoder's); 0 for a LoRA.
	Vectors, Width int
	// Hash is AUTOMATIC1111's short hash of the file (a LoRA's "addnet"
	// hash, an embedding's SHA-256), which its infotexts record as
	// "Lora hashes" and "TI hashes"; "" when the file cannot be read.
	// LoRA and Embeddings fill it; LoRAs and ListModels leave it empty, so
	// that listing a folder of large files hashes none of them.
	Hash string
	// Size is the file's bytes, or a model folder's (all its files');
	// ModTime its modification time, or the latest of a folder's files.
	// ListModels fills them.
	Size    int64
	ModTime time.Time
}

// ListModels lists the models in a models folder as AUTOMATIC1111's
// checkpoint list does, sorted by path: single-file checkpoints
// (.safetensors, .ckpt), named by their path relative to dir without
// extension, and model folders (any folder holding model_index.json: a
// diffusers or optimum export), named by their relative path, at any
// depth, linked ones included. Names and paths starting with "." are
// passed over, and so are the files inside a model folder. Each can be
// given to Open.
func ListModels(dir string) ([]ModelFile, error) {
	es, err := modellib.Models(dir)
	if err != nil {
		return nil, fmt.Errorf("sd: %w", err)
	}
	out := make([]ModelFile, len(es))
	for i, e := range es {
		out[i] = ModelFile{Name: e.Name, Path: e.Path, Size: e.Size, ModTime: e.ModTime}
	}
	return out, nil
}

// LoRAs lists the LoRAs requests may apply by name (WithLoRADir), sorted
// by name; nil without a LoRA folder.
func (m *Model) LoRAs() []ModelFile {
	rt, ok := m.rt.(*ckptrun.Components)
	if !ok || rt.LoRAs == nil {
		return nil
	}
	var out []ModelFile
	for _, n := range rt.LoRAs.Names() {
		p, _ := rt.LoRAs.Path(n)
		out = append(out, ModelFile{Name: n, Path: p})
	}
	return out
}

// LoRA returns the LoRA requests name name, with its hash.
func (m *Model) LoRA(name string) (ModelFile, bool) {
	rt, ok := m.rt.(*ckptrun.Components)
	if !ok || rt.LoRAs == nil {
		return ModelFile{}, false
	}
	p, ok := rt.LoRAs.Path(name)
	if !ok {
		return ModelFile{}, false
	}
	h, _ := fileHashes().LoRAHash(p)
	return ModelFile{Name: name, Path: p, Hash: h}, true
}

// Embeddings lists the textual-inversion embeddings prompts may use
// (WithEmbeddingsDir), sorted by name; nil without an embeddings folder.
func (m *Model) Embeddings() []ModelFile {
	rt, ok := m.rt.(*ckptrun.Components)
	if !ok || rt.Embeddings == nil {
		return nil
	}
	var out []ModelFile
	for _, e := range rt.Embeddings.List() {
		f := ModelFile{Name: e.Name, Path: e.Path, Vectors: e.Len()}
		f.Hash, _ = fileHashes().EmbeddingHash(e.Path)
		for w := range e.Vectors {
			if f.Width == 0 || w < f.Width {
				f.Width = w
			}
		}
		out = append(out, f)
	}
	return out
}

// LoRAHashes returns AUTOMATIC1111's "Lora hashes" value for the LoRAs req
// applies (its prompt's <lora:name:multiplier> tags, then req.LoRAs), in
// order of first use: "name: hash, ..."; "" when it applies none that the
// LoRA folder has. Result.Infotexts record it, and services that write
// their own infotexts take it from here.
func (m *Model) LoRAHashes(req Request) string {
	_, tagged, _ := pipeline.ExtractLoRAs(req.Prompt)
	names := make([]string, 0, len(tagged)+len(req.LoRAs))
	for _, l := range tagged {
		names = append(names, l.Name)
	}
	for _, l := range req.LoRAs {
		names = append(names, l.Name)
	}
	var parts []string
	seen := map[string]bool{}
	for _, n := range names {
		if seen[n] {
			continue
		}
		seen[n] = true
		if l, ok := m.LoRA(n); ok && l.Hash != "" {
			parts = append(parts, n+": "+l.Hash)
		}
	}
	return strings.Join(parts, ", ")
}

// HashFile returns the hex SHA-256 of the file at path (AUTOMATIC1111's
// checkpoint hash, whose first 10 digits are its "Model hash"), computed
// once per path, size and modification time and kept in the cache folder.
func HashFile(path string) (string, error) {
	return fileHashes().SHA256(path)
}

// HashModel returns the hex SHA-256 that stands for a model: a single
// file's own SHA-256 (HashFile), or a model folder's content hash, the
// SHA-256 of the sha256sum-style listing of its files,
//
//	<hex SHA-256 of the file>  <path relative to the folder, slash-separated>\n
//
// one line per regular file in byte order of the path, skipping names
// that start with "." at any depth, so that the same files give the same
// hash wherever they lie. The shell equivalent is
//
//	(cd DIR && find . -type f -not -path '*/.*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
//
// Large files (the weights) are hashed once per path, size and
// modification time, as HashFile does.
func HashModel(path string) (string, error) {
	return fileHashes().Model(path)
}
