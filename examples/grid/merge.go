package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// MergeSummary counts what Merge did.
type MergeSummary struct {
	Records   int // in the merged manifest
	Copied    int // image files copied or linked into the output folder
	Duplicate int // records seen in more than one source, identical
	Total     int // items in the grid, from the records (0 if they disagree)
	Missing   int // Total - Records when Total is known
}

// Merge combines the manifests of sources (output folders, or manifest
// files) into out/manifest.jsonl, sorted by grid index, copying each image
// into out unless it is there already. Every record must verify against
// its file; a key seen twice must have the same image hash. Records that
// fail are left out and reported in the error; the rest is still merged.
func Merge(out string, sources []string) (sum MergeSummary, err error) {
	merged := map[string]Record{}
	from := map[string]string{} // key → source folder
	var errs []error
	totals := map[int]bool{}
	for _, src := range sources {
		dir, names := src, []string(nil)
		if fi, err := os.Stat(src); err != nil {
			return sum, fmt.Errorf("grid: merge: %w", err)
		} else if fi.IsDir() {
			if names, err = manifests(src); err != nil {
				return sum, err
			}
			if len(names) == 0 {
				return sum, fmt.Errorf("grid: merge: no manifest*.jsonl in %s", src)
			}
		} else {
			dir, names = filepath.Dir(src), []string{src}
		}
		for _, name := range names {
			recs, err := readManifest(name)
			if err != nil {
				return sum, err
			}
			for _, r := range recs {
				if err := verify(dir, r); err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", name, err))
					continue
				}
				totals[r.Total] = true
				if prev, ok := merged[r.Key]; ok {
					switch {
					case prev.SHA256 == r.SHA256:
						sum.Duplicate++
					case prev.Params == r.Params:
						errs = append(errs, fmt.Errorf("grid: merge: %s: same parameters, different images in %s and %s (not deterministic?)", r.File, from[r.Key], dir))
					default:
						errs = append(errs, fmt.Errorf("grid: merge: %s: made with other parameters in %s and %s", r.File, from[r.Key], dir))
					}
					continue
				}
				merged[r.Key], from[r.Key] = r, dir
			}
		}
	}
	for key, r := range merged {
		copied, err := place(from[key], out, r)
		if err != nil {
			errs = append(errs, err)
			delete(merged, key)
			continue
		}
		if copied {
			sum.Copied++
		}
	}
	recs := sorted(merged)
	err = writeFileAtomic(filepath.Join(out, "manifest.jsonl"), func(w io.Writer) error {
		enc := json.NewEncoder(w)
		for _, r := range recs {
			if err := enc.Encode(r); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return sum, fmt.Errorf("grid: merge: %w", err)
	}
	sum.Records = len(recs)
	if len(totals) == 1 {
		for t := range totals {
			sum.Total, sum.Missing = t, t-len(recs)
		}
	}
	return sum, errors.Join(errs...)
}

// place puts the record's file into out, reporting whether it copied.
func place(srcDir, out string, r Record) (bool, error) {
	src := filepath.Join(srcDir, filepath.FromSlash(r.File))
	dst := filepath.Join(out, filepath.FromSlash(r.File))
	if verify(out, r) == nil {
		return false, nil // the same folder, or merged before
	}
	err := writeFileAtomic(dst, func(w io.Writer) error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(w, f)
		return err
	})
	if err == nil {
		err = verify(out, r)
	}
	if err != nil {
		return false, fmt.Errorf("grid: merge: copying %s: %w", r.File, err)
	}
	return true, nil
}
