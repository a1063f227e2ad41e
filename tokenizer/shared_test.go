package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// sharedDir returns ../shared next to the module root, or $SDPIPE_SHARED,
// skipping the test when it is absent.
func sharedDir(tb testing.TB) string {
	tb.Helper()
	if d := os.Getenv("SDPIPE_SHARED"); d != "" {
		return d
	}
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Skip("go.mod not found; cannot locate ../shared")
		}
		dir = parent
	}
	d := filepath.Join(dir, "..", "shared")
	if _, err := os.Stat(filepath.Join(d, "clip-tokenizer", "vocab.json")); err != nil {
		tb.Skipf("reference data not found at %s (set SDPIPE_SHARED): %v", d, err)
	}
	return d
}

var (
	realOnce sync.Once
	realTok  *CLIP
	realErr  error
)

// realCLIP loads the SD 1.x tokenizer from ../shared/clip-tokenizer once.
func realCLIP(tb testing.TB) *CLIP {
	tb.Helper()
	dir := filepath.Join(sharedDir(tb), "clip-tokenizer")
	realOnce.Do(func() { realTok, realErr = Load(dir) })
	if realErr != nil {
		tb.Fatal(realErr)
	}
	return realTok
}

type refCase struct {
	Prompt             string  `json:"prompt"`
	IDs                []int32 `json:"ids"`
	IDsUntruncated     []int32 `json:"ids_untruncated"`
	Tokens             []string
	IDsFtfy            []int32 `json:"ids_ftfy"`
	IDsUntruncatedFtfy []int32 `json:"ids_untruncated_ftfy"`
}

func refCases(tb testing.TB) []refCase {
	tb.Helper()
	f, err := os.Open(filepath.Join(sharedDir(tb), "reference", "tokenizer", "public.jsonl"))
	if err != nil {
		tb.Skipf("reference prompts absent: %v", err)
	}
	defer f.Close()
	var cases []refCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<24)
	for sc.Scan() {
		var c refCase
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			tb.Fatal(err)
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(cases) == 0 {
		tb.Fatal("no reference prompts")
	}
	return cases
}
