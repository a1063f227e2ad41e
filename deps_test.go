package sdpipe_test

// This test enforces the project's layering (see the style guide): lower
// packages never import higher ones, and onnxruntime_go has exactly one
// importer. It reads the non-test imports of every package in the module,
// as go/build/deps_test.go does for the standard library.

import (
	"go/build"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/sdpipe/sdpipe"

// allowed lists, for each package of the module, the module packages it may
// import. A package missing from this table fails the test, so new
// packages must take their place in the layering.
var allowed = map[string][]string{
	"tokenizer":            {},
	"scheduler":            {},
	"rng":                  {},
	"internal/onnxpb":      {},
	"internal/cachedir":    {},
	"internal/safetensors": {"internal/half"},
	"internal/torchfile":   {"internal/safetensors"},
	"internal/ckpt":        {"internal/safetensors", "internal/torchfile", "internal/modelgen", "internal/onnxpb", "internal/cachedir", "internal/modellib"},
	"internal/modellib":    {},
	"internal/ckptrun":     {"internal/ckpt", "internal/ort", "pipeline", "tokenizer", "scheduler", "vae"},
	"session":              {},
	"internal/half":        {},
	"internal/webp":        {},
	"internal/ort":         {"internal/onnxpb", "internal/cachedir", "internal/half", "session"},
	"internal/modelgen":    {"internal/onnxpb", "tokenizer", "internal/half"},
	"internal/rewrite":     {"internal/onnxpb", "internal/ort", "internal/cachedir", "internal/half", "session"},
	"internal/shareddir":   {},
	"internal/testenv":     {"internal/ort", "internal/onnxpb", "internal/shareddir", "session", "tokenizer", "textenc", "unet", "vae"},
	"textenc":              {"internal/ort", "internal/onnxpb", "internal/rewrite", "session"},
	"unet":                 {"internal/ort", "internal/onnxpb", "internal/rewrite", "session"},
	"vae":                  {"internal/ort", "internal/onnxpb", "internal/rewrite", "session"},
	"pipeline":             {"tokenizer", "scheduler", "rng"},
	"models":               {"internal/cachedir"},
	"sd":                   {"tokenizer", "scheduler", "rng", "internal/cachedir", "internal/ort", "internal/onnxpb", "internal/rewrite", "session", "textenc", "unet", "vae", "pipeline", "internal/ckpt", "internal/ckptrun", "internal/webp", "internal/modellib"},
	// server is the HTTP service library: a program on sd, like the
	// examples, that other programs import
	"server": {"sd"},
	// the job queue and store of server on NATS JetStream
	"server/natsqueue": {"server"},
	// tests only: the container image's files
	"deploy": {},
}

// top lists prefixes of packages that sit on top: they may import anything
// below them, and nothing may import them (except that the examples share
// examples/internal/...).
var top = []string{"examples/", "bench", "cmd/"}

// programs lists the example programs that show what a program needs of
// the library: they may import only sd and models (and the examples'
// shared helpers, and the service library).
var programs = map[string][]string{
	"examples/server":       {"sd", "models", "server", "server/natsqueue", "examples/internal/cli"},
	"examples/grid":         {"sd", "models", "examples/internal/cli"},
	"cmd/sdload":            {}, // a load generator speaks HTTP only
	"examples/txt2img":      {"sd", "models", "examples/internal/cli"},
	"examples/img2img":      {"sd", "models", "examples/internal/cli"},
	"examples/internal/cli": {"sd", "models"},
}

func isTop(p string) bool {
	for _, t := range top {
		if strings.HasPrefix(p, t) {
			return true
		}
	}
	return false
}

func TestImportLayering(t *testing.T) {
	pkgs := map[string][]string{} // package → its module imports
	ortImporters := []string{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			return nil
		}
		if name := d.Name(); path != "." && (strings.HasPrefix(name, ".") || name == "testdata") {
			return filepath.SkipDir
		}
		bp, err := build.Default.ImportDir(path, 0)
		if err != nil {
			return nil // no Go files
		}
		rel := filepath.ToSlash(path)
		for _, imp := range bp.Imports {
			if imp == "github.com/yalue/onnxruntime_go" {
				ortImporters = append(ortImporters, rel)
			}
			if p, ok := strings.CutPrefix(imp, module+"/"); ok {
				pkgs[rel] = append(pkgs[rel], p)
			}
		}
		if _, ok := pkgs[rel]; !ok {
			pkgs[rel] = nil
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ortImporters, []string{"internal/ort"}) {
		t.Errorf("onnxruntime_go is imported by %v, want internal/ort alone", ortImporters)
	}
	for pkg, imps := range pkgs {
		if pkg == "." {
			continue
		}
		for _, imp := range imps {
			if isTop(imp) && !(strings.HasPrefix(pkg, "examples/") && strings.HasPrefix(imp, "examples/internal/")) {
				t.Errorf("%s imports %s, which sits on top of the layering", pkg, imp)
			}
		}
		if ok, isProgram := programs[pkg]; isProgram {
			for _, imp := range imps {
				if !slices.Contains(ok, imp) {
					t.Errorf("%s imports %s; a program needs only %v", pkg, imp, ok)
				}
			}
		}
		if isTop(pkg) {
			continue
		}
		ok, known := allowed[pkg]
		if !known {
			t.Errorf("package %s has no place in the layering table of deps_test.go", pkg)
			continue
		}
		for _, imp := range imps {
			if !slices.Contains(ok, imp) {
				t.Errorf("%s imports %s; it may import only %v", pkg, imp, ok)
			}
		}
	}
	for _, p := range []string{"tokenizer", "scheduler", "pipeline", "internal/ort", "examples/txt2img", "examples/internal/cli", "server", "examples/server", "cmd/sdload"} {
		if _, ok := pkgs[p]; !ok {
			t.Errorf("package %s not found: is the test running at the module root?", p)
		}
	}
}
