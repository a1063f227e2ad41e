package main

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// shared holds what the end-to-end tests share: a generated tiny model
// and a clean full run of testConfig, which tests must not modify.
var shared struct {
	once             sync.Once
	root, model, ref string
	err              error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.root != "" {
		os.RemoveAll(shared.root)
	}
	os.Exit(code)
}

// testConfig is a 2 × 2 × 2 grid of 64×64 images in 2 steps.
func testConfig(model string) Config {
	return Config{
		Model:    model,
		Subjects: []string{"a red fox", "a lighthouse, at dusk"},
		Styles:   []string{"Hokusai", "Van Gogh"},
		Images:   2, Seed: 42, Steps: 2, NegativePrompt: "blurry",
	}
}

func testOptions(t *testing.T, model, out string, s Shard) RunOptions {
	t.Helper()
	var opts []sd.Option
	for _, c := range []sd.Component{sd.TextEncoder, sd.UNet, sd.VAEDecoder} {
		opts = append(opts, sd.WithThreads(c, 1))
	}
	return RunOptions{
		Config: testConfig(model), Out: out, Shard: s, Concurrency: 3,
		Open: append(opts, sd.WithoutVAEEncoder()),
	}
}

// setup returns the model folder and the folder of a clean full run.
func setup(t *testing.T) (model, ref string) {
	t.Helper()
	testenv.RequireORT(t)
	shared.once.Do(func() {
		if shared.root, shared.err = os.MkdirTemp("", "grid-test-"); shared.err != nil {
			return
		}
		shared.model = filepath.Join(shared.root, "tiny")
		if shared.err = modelgen.Write(shared.model, modelgen.Tiny(), modelgen.Options{}); shared.err != nil {
			return
		}
		shared.ref = filepath.Join(shared.root, "ref")
		_, shared.err = Run(context.Background(), testOptions(t, shared.model, shared.ref, Shard{}))
	})
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.model, shared.ref
}

// hashes maps each key of dir's manifests to its image hash, checking
// that every record verifies.
func hashes(t *testing.T, dir string) map[string]string {
	t.Helper()
	recs, err := readDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k, r := range recs {
		if err := verify(dir, r); err != nil {
			t.Errorf("%s: %v", dir, err)
		}
		out[k] = r.SHA256
	}
	return out
}

func lines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func TestRunManifest(t *testing.T) {
	model, ref := setup(t)
	c := testConfig(model)
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	items := c.Items()
	recs, err := readManifest(filepath.Join(ref, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(items) {
		t.Fatalf("%d records, want %d", len(recs), len(items))
	}
	modelHash, err := sd.HashModel(model)
	if err != nil {
		t.Fatal(err)
	}
	byKey := map[string]Record{}
	for _, r := range recs {
		byKey[r.Key] = r
	}
	for _, it := range items {
		r, ok := byKey[it.Key]
		if !ok {
			t.Errorf("item %d (%s) has no record", it.Index, it.Prompt)
			continue
		}
		want := Record{
			Key: it.Key, Index: it.Index, Total: len(items), Subject: it.Subject, Style: it.Style, Replica: it.Replica,
			Prompt: it.Prompt, NegativePrompt: "blurry", BaseSeed: 42, Seed: it.Seed, Generator: "numpy",
			Steps: 2, Guidance: 7.5, Width: 64, Height: 64,
			Model: model, ModelHash: modelHash, File: it.File,
		}
		got := r
		got.Scheduler, got.Library, got.Params, got.Timings, got.Created, got.SHA256 = "", "", "", Timings{}, "", ""
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("item %d record (-want +got):\n%s", it.Index, d)
		}
		if r.Scheduler == "" || !strings.HasPrefix(r.Library, "sdpipe ") || r.Params == "" || r.Created == "" {
			t.Errorf("item %d: scheduler %q library %q params %q created %q", it.Index, r.Scheduler, r.Library, r.Params, r.Created)
		}
		if r.Timings.Total <= 0 || r.Timings.Denoise <= 0 || r.Timings.Total < r.Timings.Denoise {
			t.Errorf("item %d timings %+v", it.Index, r.Timings)
		}
		if err := verify(ref, r); err != nil {
			t.Error(err)
		}
		f, err := os.Open(filepath.Join(ref, r.File))
		if err != nil {
			t.Fatal(err)
		}
		params, err := sd.ReadPNGParameters(f)
		f.Close()
		if err != nil || !strings.HasPrefix(params, it.Prompt+"\nNegative prompt: blurry\n") || !strings.Contains(params, "Seed: "+strconv.FormatInt(it.Seed, 10)) {
			t.Errorf("item %d PNG parameters %q, %v", it.Index, params, err)
		}
	}
	// images differ from each other (the seeds and prompts matter)
	seen := map[string]bool{}
	for _, r := range recs {
		if seen[r.SHA256] {
			t.Errorf("image %s repeats", r.File)
		}
		seen[r.SHA256] = true
	}
}

func TestRunSkipsDone(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	if err := os.CopyFS(out, os.DirFS(ref)); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(filepath.Join(out, "manifest.jsonl"))
	sum, err := Run(t.Context(), testOptions(t, model, out, Shard{}))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Items != 8 || sum.Skipped != 8 || sum.Generated != 0 {
		t.Errorf("rerun %+v, want all 8 skipped", sum)
	}
	if after, _ := os.ReadFile(filepath.Join(out, "manifest.jsonl")); !bytes.Equal(before, after) {
		t.Error("a rerun changed the manifest")
	}

	// a changed setting redoes the items, and the new records win
	o := testOptions(t, model, out, Shard{})
	o.Config.Steps = 3
	sum, err = Run(t.Context(), o)
	if err != nil || sum.Generated != 8 {
		t.Fatalf("steps changed: %+v, %v; want 8 generated", sum, err)
	}
	recs := hashes(t, out)
	for k, h := range hashes(t, ref) {
		if recs[k] == h {
			t.Errorf("%s: same image with 3 steps as with 2", k)
		}
	}
	if n := len(lines(t, filepath.Join(out, "manifest.jsonl"))); n != 16 {
		t.Errorf("%d manifest lines, want 16 (8 + 8 newer)", n)
	}
}

// TestResume cancels a run midway, then reruns it: nothing written is lost
// or redone, and the result equals a clean run.
func TestResume(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	o := testOptions(t, model, out, Shard{})
	o.Concurrency = 2
	n := 0
	o.OnRecord = func(Record) {
		if n++; n == 3 {
			cancel()
		}
	}
	sum, err := Run(ctx, o)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled run: %v, want context.Canceled", err)
	}
	if sum.Generated < 3 || sum.Generated >= 8 {
		t.Fatalf("canceled run generated %d, want 3 to 7", sum.Generated)
	}
	first := sum.Generated
	if got := len(lines(t, sum.Manifest)); got != first {
		t.Errorf("%d manifest lines after the interruption, want %d", got, first)
	}
	// a torn append of an interrupted process is cut, not fatal
	f, err := os.OpenFile(sum.Manifest, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"key":"torn`)
	f.Close()

	o.OnRecord = nil
	sum, err = Run(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Skipped != first || sum.Generated != 8-first {
		t.Errorf("resumed run %+v, want %d skipped and %d generated", sum, first, 8-first)
	}
	if got := len(lines(t, sum.Manifest)); got != 8 {
		t.Errorf("%d manifest lines, want 8 (nothing redone)", got)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, out)); d != "" {
		t.Errorf("resumed run differs from a clean run (-clean +resumed):\n%s", d)
	}
}

// TestResumeRedoesBad damages outputs: a changed image and a missing one
// are made again, the rest skipped.
func TestResumeRedoesBad(t *testing.T) {
	model, ref := setup(t)
	out := t.TempDir()
	if err := os.CopyFS(out, os.DirFS(ref)); err != nil {
		t.Fatal(err)
	}
	recs, err := readManifest(filepath.Join(out, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(out, recs[1].File), []byte("not a png"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(out, recs[5].File)); err != nil {
		t.Fatal(err)
	}
	sum, err := Run(t.Context(), testOptions(t, model, out, Shard{}))
	if err != nil {
		t.Fatal(err)
	}
	if sum.Skipped != 6 || sum.Generated != 2 {
		t.Errorf("%+v, want 6 skipped and 2 generated", sum)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, out)); d != "" {
		t.Errorf("repaired run differs (-clean +repaired):\n%s", d)
	}
}

// TestShardUnion runs the two shards of the grid into their own folders,
// merges them, and compares the result with a single-machine run.
func TestShardUnion(t *testing.T) {
	model, ref := setup(t)
	root := t.TempDir()
	var dirs []string
	items := 0
	for i := range 2 {
		dir := filepath.Join(root, "shard"+strconv.Itoa(i))
		sum, err := Run(t.Context(), testOptions(t, model, dir, Shard{Index: i, Count: 2}))
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(sum.Manifest) != "manifest-"+strconv.Itoa(i)+"-of-2.jsonl" || sum.Generated != 4 {
			t.Errorf("shard %d: %+v", i, sum)
		}
		items += sum.Items
		dirs = append(dirs, dir)
	}
	if items != 8 {
		t.Errorf("shards hold %d items, want 8", items)
	}
	merged := filepath.Join(root, "merged")
	sum, err := Merge(merged, dirs)
	if err != nil {
		t.Fatal(err)
	}
	if sum.Records != 8 || sum.Copied != 8 || sum.Total != 8 || sum.Missing != 0 {
		t.Errorf("merge %+v", sum)
	}
	if d := cmp.Diff(hashes(t, ref), hashes(t, merged)); d != "" {
		t.Errorf("merged shards differ from a single run (-single +merged):\n%s", d)
	}
	// the merged manifest is in grid order, one line per item
	recs, err := readManifest(filepath.Join(merged, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range recs {
		if r.Index != i {
			t.Errorf("merged line %d has index %d", i, r.Index)
		}
	}

	// merging again, with a duplicate source, changes nothing
	before, _ := os.ReadFile(filepath.Join(merged, "manifest.jsonl"))
	sum, err = Merge(merged, append(dirs, dirs[0], merged))
	if err != nil || sum.Copied != 0 || sum.Duplicate != 4+8 {
		t.Errorf("second merge %+v, %v", sum, err)
	}
	if after, _ := os.ReadFile(filepath.Join(merged, "manifest.jsonl")); !bytes.Equal(before, after) {
		t.Error("a second merge changed the manifest")
	}

	// a shard missing: the merge says what is missing
	part := filepath.Join(root, "part")
	if sum, err = Merge(part, dirs[:1]); err != nil || sum.Records != 4 || sum.Missing != 4 {
		t.Errorf("merge of one shard %+v, %v; want 4 records and 4 missing", sum, err)
	}
}

func TestMergeRejectsBadRecords(t *testing.T) {
	_, ref := setup(t)
	bad := t.TempDir()
	if err := os.CopyFS(bad, os.DirFS(ref)); err != nil {
		t.Fatal(err)
	}
	recs, err := readManifest(filepath.Join(bad, "manifest.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	// one image damaged, and another made differently with the same params
	if err := os.WriteFile(filepath.Join(bad, recs[0].File), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := recs[1]
	src, _ := os.ReadFile(filepath.Join(bad, recs[2].File))
	if err := os.WriteFile(filepath.Join(bad, other.File), src, 0o644); err != nil {
		t.Fatal(err)
	}
	other.SHA256 = recs[2].SHA256
	app, err := openAppender(filepath.Join(bad, "manifest-x.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := app.append(other); err != nil {
		t.Fatal(err)
	}
	app.Close()
	out := t.TempDir()
	sum, err := Merge(out, []string{ref, bad})
	if err == nil || !strings.Contains(err.Error(), "sha256") || !strings.Contains(err.Error(), "different images") {
		t.Errorf("merge error %v, want the damaged file and the conflict reported", err)
	}
	if sum.Records != 8 {
		t.Errorf("%d records merged, want the 8 good ones", sum.Records)
	}
	if _, err := Merge(out, []string{t.TempDir()}); err == nil {
		t.Error("merge of a folder without manifests: no error")
	}
}

func TestSearch(t *testing.T) {
	_, ref := setup(t)
	c := testConfig("")
	seed := DeriveSeed(c.Seed, "a red fox", "Van Gogh", 1)
	for _, tc := range []struct {
		name string
		q    Query
		want int
	}{
		{"all", Query{Seed: -1}, 8},
		{"prompt", Query{Prompt: "FOX", Seed: -1}, 4},
		{"style", Query{Style: "van gogh", Seed: -1}, 4},
		{"style is exact", Query{Style: "van", Seed: -1}, 0},
		{"prompt and style", Query{Prompt: "lighthouse", Style: "Hokusai", Seed: -1}, 2},
		{"subject", Query{Subject: "dusk", Seed: -1}, 4},
		{"seed", Query{Seed: seed}, 1},
		{"none", Query{Prompt: "zebra", Seed: -1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := Search(ref, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != tc.want {
				t.Fatalf("%d matches, want %d", len(recs), tc.want)
			}
			for _, r := range recs {
				if !tc.q.Match(r) {
					t.Errorf("%s does not match", r.Prompt)
				}
			}
		})
	}
	var out, errb bytes.Buffer
	if err := run(t.Context(), []string{"search", "-dir", ref, "-seed", strconv.FormatInt(seed, 10)}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\t"); len(got) != 3 || got[2] != "a red fox by Van Gogh" ||
		!strings.HasPrefix(got[0], filepath.Join(ref, "images", "van-gogh", "a-red-fox-1-")) {
		t.Errorf("search printed %q", out.String())
	}
}

func TestSheets(t *testing.T) {
	_, ref := setup(t)
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(ref)); err != nil {
		t.Fatal(err)
	}
	recs, _ := readManifest(filepath.Join(dir, "manifest.jsonl"))
	os.Remove(filepath.Join(dir, recs[0].File)) // drawn as a grey cell
	files, err := Sheets(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "sheets", "hokusai.png"), filepath.Join(dir, "sheets", "van-gogh.png")}
	if d := cmp.Diff(want, files); d != "" {
		t.Fatalf("sheets (-want +got):\n%s", d)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		// two rows of 64-pixel images, two columns
		if b := img.Bounds(); b.Dx() < 2*64 || b.Dy() < 2*64 {
			t.Errorf("%s is %v", name, b)
		}
	}
}

func TestCLI(t *testing.T) {
	model, ref := setup(t)
	dir := t.TempDir()
	config := filepath.Join(dir, "grid.json")
	if err := os.WriteFile(config, []byte(`{"subjects":["a red fox","a lighthouse, at dusk"],"styles":["Hokusai","Van Gogh"],"images":2,"seed":1,"steps":9,"negative_prompt":"blurry"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	// the config with flags over it: seed and steps from flags
	out := filepath.Join(dir, "out")
	var stdout, stderr bytes.Buffer
	args := []string{"run", "-config", config, "-model", model, "-seed", "42", "-steps", "2", "-out", out,
		"-threads", "1", "-mode", "latency", "-shard", "1/2"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	want := hashes(t, ref)
	for k, h := range hashes(t, out) {
		if want[k] != h {
			t.Errorf("%s: CLI run image differs from the reference run", k)
		}
	}
	if !strings.Contains(stdout.String(), "4 generated") {
		t.Errorf("run printed %q", stdout.String())
	}
	if err := run(t.Context(), []string{"merge", "-out", filepath.Join(dir, "m"), out}, &stdout, &stderr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stdout.String(), "4 of 8 grid items missing") || !strings.Contains(stdout.String(), "sheet ") {
		t.Errorf("merge printed %q", stdout.String())
	}

	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"subjects":["a"],"styles":["b"],"sceduler":"Euler"}`), 0o644)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "flag: help requested"},
		{"unknown command", []string{"paint"}, `unknown command "paint"`},
		{"missing config", []string{"run", "-config", filepath.Join(dir, "nope.json")}, "no such file"},
		{"unknown field", []string{"run", "-config", bad}, `unknown field "sceduler"`},
		{"no styles", []string{"run", "-subject", "a"}, "no styles"},
		{"bad shard", []string{"run", "-subject", "a", "-style", "b", "-shard", "2/2"}, "want 0 <= index < count"},
		{"bad mode", []string{"run", "-subject", "a", "-style", "b", "-mode", "fast"}, `unknown mode "fast"`},
		{"bad flag", []string{"run", "-stepz", "3"}, "flag provided but not defined"},
		{"merge usage", []string{"merge", "-out", dir}, "at least one shard folder"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(t.Context(), tc.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("run(%q) = %v, want an error containing %q", tc.args, err, tc.want)
			}
		})
	}
}
