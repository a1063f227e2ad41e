package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/ort"
)

// DefaultModelDir returns where DefaultModel keeps the generated SD 1.5
// model with the given attention form, under ort.CacheDir().
func DefaultModelDir(form modelgen.AttentionForm) string {
	return filepath.Join(ort.CacheDir(), "models", "generated-sd15-"+form.String()+"-v1")
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
// dir already holds one (a model_index.json).
func EnsureModel(dir string, cfg modelgen.Config, opt modelgen.Options) error {
	if _, err := os.Stat(filepath.Join(dir, "model_index.json")); err == nil {
		return nil
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-"+filepath.Base(dir)+"-")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := modelgen.Write(tmp, cfg, opt); err != nil {
		os.RemoveAll(tmp)
		return fmt.Errorf("bench: generating %s: %w", dir, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		os.RemoveAll(tmp)
		if _, serr := os.Stat(filepath.Join(dir, "model_index.json")); serr == nil {
			return nil // another process won the race
		}
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
