package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/internal/modelgen"
)

// DefaultModelDir returns where DefaultModel keeps the generated SD 1.5
// model with the given attention form, in the per-user cache.
func DefaultModelDir(form modelgen.AttentionForm) string {
	return filepath.Join(cachedir.Dir(), "models", "generated-sd15-"+form.String()+"-v1")
}

// DefaultModel returns the folder of the generated SD 1.5-configuration
// model (modelgen.SD15, random weights) with attention written in form,
// generating it into the cache on first use (4.3 GB, about half a minute).
// It is safe to call from several processes: the folder is written under a
// temporary name and renamed into place.
func DefaultModel(form modelgen.AttentionForm) (string, error) {
	dir := DefaultModelDir(form)
	return dir, EnsureModel(dir, modelgen.SD15(), modelgen.Options{Attention: form})
}

// EnsureModel generates a model folder with modelgen.Write at dir unless
// dir already holds one (a model_index.json), atomically
// (cachedir.Build).
func EnsureModel(dir string, cfg modelgen.Config, opt modelgen.Options) error {
	valid := func(dir string) error {
		_, err := os.Stat(filepath.Join(dir, "model_index.json"))
		return err
	}
	if err := cachedir.Build(dir, valid, func(tmp string) error { return modelgen.Write(tmp, cfg, opt) }); err != nil {
		return fmt.Errorf("bench: generating %s: %w", dir, err)
	}
	return nil
}
