package tokenizer

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/shareddir"
)

// sharedDir returns ../shared beside the module root ($SDPIPE_SHARED
// overrides), skipping the test when its CLIP vocabulary is absent.
func sharedDir(tb testing.TB) string {
	tb.Helper()
	return shareddir.Path(tb, "clip-tokenizer/vocab.json")
}

// realCLIP loads the SD 1.x tokenizer from ../shared/clip-tokenizer once.
var realCLIP = onceCLIP(Load)

// onceCLIP returns a getter of the tokenizer load reads from
// ../shared/clip-tokenizer: it loads it the first time it is called, and
// fails (or skips, without ../shared) the test that calls it.
func onceCLIP(load func(dir string) (*CLIP, error)) func(testing.TB) *CLIP {
	var (
		once sync.Once
		tok  *CLIP
		err  error
	)
	return func(tb testing.TB) *CLIP {
		tb.Helper()
		dir := filepath.Join(sharedDir(tb), "clip-tokenizer")
		once.Do(func() { tok, err = load(dir) })
		if err != nil {
			tb.Fatal(err)
		}
		return tok
	}
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
