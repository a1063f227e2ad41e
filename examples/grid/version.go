package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
)

// HashModel returns the content hash of a model folder: the sha256 of the
// sha256sum-style listing of its files,
//
//	<hex sha256 of the file>  <path relative to dir, slash-separated>\n
//
// one line per regular file in byte order of the path, skipping names that
// start with "." at any depth. The shell equivalent is
//
//	(cd DIR && find . -type f -not -path '*/.*' -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum
//
// Files whose size and modification time match the cache in cacheFile
// (JSON; "" turns the cache off) are not read again, so a 4 GB folder is
// hashed once per machine, not once per run.
func HashModel(dir, cacheFile string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	type entry struct {
		Size    int64  `json:"size"`
		ModTime int64  `json:"mtime_ns"`
		SHA256  string `json:"sha256"`
	}
	cache := map[string]map[string]entry{} // folder → relative path → entry
	if cacheFile != "" {
		if b, err := os.ReadFile(cacheFile); err == nil {
			_ = json.Unmarshal(b, &cache) // a broken cache is rebuilt
		}
	}
	old := cache[abs]
	cur := map[string]entry{}
	var paths []string
	err = filepath.WalkDir(abs, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path != abs && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(abs, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		e := entry{Size: info.Size(), ModTime: info.ModTime().UnixNano()}
		if o, ok := old[rel]; ok && o.Size == e.Size && o.ModTime == e.ModTime && o.SHA256 != "" {
			e.SHA256 = o.SHA256
		} else if e.SHA256, err = fileSHA256(path); err != nil {
			return err
		}
		cur[rel] = e
		paths = append(paths, rel)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("grid: hashing model: %w", err)
	}
	if len(paths) == 0 {
		return "", fmt.Errorf("grid: hashing model: no files in %s", dir)
	}
	slices.Sort(paths)
	h := sha256.New()
	for _, p := range paths {
		fmt.Fprintf(h, "%s  %s\n", cur[p].SHA256, p)
	}
	if cacheFile != "" {
		cache[abs] = cur
		if b, err := json.Marshal(cache); err == nil {
			// best effort: a cache that cannot be written costs time only
			_ = writeFileAtomic(cacheFile, func(w io.Writer) error { _, err := w.Write(b); return err })
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// defaultHashCache is the model hash cache under the user's cache folder.
func defaultHashCache() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "sdpipe", "grid-model-hashes.json")
}

// libraryVersion names the sdpipe code that made an image: the module
// version when sdpipe is a dependency, else the main module's version and
// VCS revision ("(devel)+rev=1a2b3c4d5e6f+dirty" for a build from a git
// checkout), plus the Go version.
func libraryVersion() string {
	const module = "github.com/sdpipe/sdpipe"
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "sdpipe unknown"
	}
	v := ""
	if bi.Main.Path == module {
		v = bi.Main.Version
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			v += "+rev=" + rev[:min(12, len(rev))] + dirty
		}
	}
	for _, d := range bi.Deps {
		if d.Path == module {
			v = d.Version
			if d.Replace != nil {
				v += "=>" + d.Replace.Path + "@" + d.Replace.Version
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	return "sdpipe " + v + " " + bi.GoVersion
}
