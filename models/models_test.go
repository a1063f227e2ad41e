package models

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/sdpipe/sdpipe/internal/cachedir"
	"github.com/sdpipe/sdpipe/tokenizer"
)

func TestFSLayout(t *testing.T) {
	for _, p := range []string{
		"model_index.json",
		"scheduler/scheduler_config.json",
		"tokenizer/vocab.json",
		"tokenizer/merges.txt",
		"tokenizer/tokenizer_config.json",
		"tokenizer/special_tokens_map.json",
		"text_encoder/model.onnx",
		"unet/model.onnx",
		"vae_decoder/model.onnx",
		"vae_decoder/config.json",
		"vae_encoder/model.onnx",
	} {
		if _, err := fs.Stat(FS(), p); err != nil {
			t.Errorf("embedded model lacks %s: %v", p, err)
		}
	}
	var total int64
	fs.WalkDir(FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			fi, _ := d.Info()
			total += fi.Size()
		}
		return err
	})
	const limit = 10 << 20
	if total > limit {
		t.Errorf("embedded model is %d bytes, want at most %d", total, limit)
	}
}

func TestDefaultDirWritesOnceAndVerifies(t *testing.T) {
	root := t.TempDir()
	t.Setenv(cachedir.Env, root)
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(root, "models", "default-"+Hash()[:16]); dir != want {
		t.Fatalf("DefaultDir() = %s, want %s", dir, want)
	}
	if err := verify(dir, mustFiles()); err != nil {
		t.Fatalf("materialized copy does not verify: %v", err)
	}
	// A second call reuses the folder: its files keep their mtime.
	p := filepath.Join(dir, "unet", "model.onnx")
	before, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := DefaultDir(); err != nil || again != dir {
		t.Fatalf("second DefaultDir() = %s, %v; want %s", again, err, dir)
	}
	after, _ := os.Stat(p)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Error("second call rewrote a verified copy")
	}
	// No temporary folders are left behind.
	ents, _ := os.ReadDir(filepath.Join(root, "models"))
	if len(ents) != 1 {
		t.Errorf("cache holds %d entries, want 1: %v", len(ents), ents)
	}
}

func TestDefaultDirRepairsDamage(t *testing.T) {
	for _, damage := range []struct {
		name string
		do   func(dir string) error
	}{
		{"changed byte", func(dir string) error {
			p := filepath.Join(dir, "tokenizer", "vocab.json")
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			b[len(b)/2] ^= 1
			return os.WriteFile(p, b, 0o644)
		}},
		{"truncated", func(dir string) error {
			return os.Truncate(filepath.Join(dir, "unet", "model.onnx"), 100)
		}},
		{"missing", func(dir string) error {
			return os.Remove(filepath.Join(dir, "vae_decoder", "config.json"))
		}},
	} {
		t.Run(damage.name, func(t *testing.T) {
			t.Setenv(cachedir.Env, t.TempDir())
			dir, err := DefaultDir()
			if err != nil {
				t.Fatal(err)
			}
			if err := damage.do(dir); err != nil {
				t.Fatal(err)
			}
			if verify(dir, mustFiles()) == nil {
				t.Fatal("damage went unnoticed")
			}
			again, err := DefaultDir()
			if err != nil {
				t.Fatal(err)
			}
			if err := verify(again, mustFiles()); err != nil {
				t.Errorf("not repaired: %v", err)
			}
		})
	}
}

func TestDefaultDirConcurrent(t *testing.T) {
	root := t.TempDir()
	t.Setenv(cachedir.Env, root)
	const n = 8
	dirs := make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var err error
			if dirs[i], err = DefaultDir(); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for i := 1; i < n; i++ {
		if dirs[i] != dirs[0] {
			t.Errorf("caller %d got %s, caller 0 got %s", i, dirs[i], dirs[0])
		}
	}
	if err := verify(dirs[0], mustFiles()); err != nil {
		t.Error(err)
	}
	ents, _ := os.ReadDir(filepath.Join(root, "models"))
	if len(ents) != 1 {
		t.Errorf("cache holds %d entries after concurrent calls, want 1: %v", len(ents), ents)
	}
}

func mustFiles() []file {
	fl, _ := files()
	return fl
}

// TestTokenizerLoads loads the model's BPE vocabulary with the project's
// CLIP tokenizer and checks that every caption word is one token.
func TestTokenizerLoads(t *testing.T) {
	dir, err := DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer"))
	if err != nil {
		t.Fatal(err)
	}
	if tok.MaxLength() != 77 || tok.Pad() != tok.EOS() || tok.BOS() != tok.EOS()-1 {
		t.Errorf("max length %d, bos %d, eos %d, pad %d: want 77 and CLIP's layout (bos = eos-1 = last ids, pad = eos)",
			tok.MaxLength(), tok.BOS(), tok.EOS(), tok.Pad())
	}
	if int(tok.EOS()) != tok.VocabSize()-1 {
		t.Errorf("eos %d is not the last id of %d", tok.EOS(), tok.VocabSize())
	}
	words := []string{"a", "on", "in", "the", "background", "with", ",", "small", "large", "top", "bottom", "left", "right", "center"}
	for _, c := range palette {
		words = append(words, c.name)
	}
	words = append(words, shapeNames...)
	for _, w := range words {
		ids := tok.AppendTokens(nil, w)
		if len(ids) != 1 {
			t.Errorf("%q is %d tokens %v, want 1", w, len(ids), ids)
		}
	}
	ids := tok.Encode("a red circle on a blue background")
	if len(ids) != 77 || ids[0] != tok.BOS() || ids[8] != tok.EOS() || ids[76] != tok.Pad() {
		t.Errorf("Encode = %v: want BOS, 7 words, EOS, padding", ids[:10])
	}
	if got, want := tok.AppendTokens(nil, "A  Red   CIRCLE"), tok.AppendTokens(nil, "a red circle"); !slices.Equal(got, want) || len(want) != 3 {
		t.Errorf("case and spaces: %v, want %v (3 ids)", got, want)
	}
}
