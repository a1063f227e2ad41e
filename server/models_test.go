package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/modelgen"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// The models folder of the tests: two tiny generated ONNX models of
// different weights (a and b) and a broken single-file checkpoint.
var modelsFolder struct {
	once sync.Once
	dir  string
	err  error
}

// twoModels returns a models folder holding a/ and b/ (modelgen's tiny
// model with different seeds) and broken.safetensors (not a checkpoint).
// The folder is shared by the tests: they must not modify it.
func twoModels(t *testing.T) string {
	t.Helper()
	testenv.RequireORT(t)
	modelsFolder.once.Do(func() {
		dir, err := os.MkdirTemp("", "sdpipe-models-")
		if err != nil {
			modelsFolder.err = err
			return
		}
		for i, n := range []string{"a", "b"} {
			if err := modelgen.Write(filepath.Join(dir, n), modelgen.Tiny(), modelgen.Options{Seed: uint64(i + 1)}); err != nil {
				modelsFolder.err = err
				return
			}
		}
		modelsFolder.err = os.WriteFile(filepath.Join(dir, "broken.safetensors"), []byte("\x10\x00\x00\x00\x00\x00\x00\x00{not json at all"), 0o644)
		modelsFolder.dir = dir
	})
	if modelsFolder.err != nil {
		t.Fatal(modelsFolder.err)
	}
	return modelsFolder.dir
}

// loader opens models with sd.Open and counts the loads per model.
type loader struct {
	mu    sync.Mutex
	loads map[string]int
	gate  chan struct{} // when set, loads wait for it to close
	began atomic.Int32  // loads begun
}

func (l *loader) open(ctx context.Context, path string) (Engine, error) {
	l.began.Add(1)
	if l.gate != nil {
		<-l.gate
	}
	l.mu.Lock()
	if l.loads == nil {
		l.loads = map[string]int{}
	}
	l.loads[filepath.Base(path)]++
	l.mu.Unlock()
	m, err := sd.Open(ctx, path, sd.WithThreads(sd.UNet, 1), sd.WithBatching(4, 20*time.Millisecond))
	if err != nil {
		return nil, err
	}
	return m, nil
}

func (l *loader) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.loads[name]
}

func newModels(t *testing.T, dir string, budget int64, l *loader) *Models {
	t.Helper()
	m, err := NewModels(ModelsConfig{Dir: dir, Open: l.open, Budget: budget})
	return testenv.CloseAtEnd(t, m, err)
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestModelsFolder serves the folder: /sdapi/v1/sd-models lists the three
// models in A1111's shape, the first is the default, a request's
// override_settings runs another without changing the default, POST
// /sdapi/v1/options switches the default, the infotexts name the model
// that made each image, the broken file fails only its own requests, and
// OpenAI's model field selects by name.
func TestModelsFolder(t *testing.T) {
	dir := twoModels(t)
	l := &loader{}
	reg := newModels(t, dir, 0, l)
	_, ts := newServerOn(t, nil, Config{Models: reg, MaxSize: 128})

	shaA, err := sd.HashModel(filepath.Join(dir, "a"))
	if err != nil {
		t.Fatal(err)
	}
	shaB, _ := sd.HashModel(filepath.Join(dir, "b"))
	shaBroken := fileSHA(t, filepath.Join(dir, "broken.safetensors"))
	titleA, titleB := "a ["+shaA[:10]+"]", "b ["+shaB[:10]+"]"
	titleBroken := "broken.safetensors [" + shaBroken[:10] + "]"

	r := get(t, ts.URL+"/sdapi/v1/sd-models")
	var raw any
	json.Unmarshal(r.body, &raw)
	checkShape(t, "sd-models", loadShapes(t)["GET /sdapi/v1/sd-models"], raw)
	var list []map[string]any
	r.json(t, &list)
	if len(list) != 3 {
		t.Fatalf("sd-models: %s", r.body)
	}
	for i, want := range []struct{ title, name, sha, file string }{
		{titleA, "a", shaA, "a"}, {titleB, "b", shaB, "b"}, {titleBroken, "broken", shaBroken, "broken.safetensors"},
	} {
		e := list[i]
		if e["title"] != want.title || e["model_name"] != want.name || e["sha256"] != want.sha || e["hash"] != want.sha[:10] || e["filename"] != filepath.Join(dir, want.file) {
			t.Errorf("sd-models[%d] = %v, want %+v", i, e, want)
		}
	}
	checkDefault := func(want string) {
		t.Helper()
		var opts map[string]any
		get(t, ts.URL+"/sdapi/v1/options").json(t, &opts)
		if opts["sd_model_checkpoint"] != want {
			t.Errorf("options: sd_model_checkpoint %v, want %s", opts["sd_model_checkpoint"], want)
		}
	}
	checkDefault(titleA)

	const body = `{"prompt":"a cat","steps":3,"seed":7,"width":64,"height":64%s}`
	imgA, textA, infoA := a1111Run(t, ts.URL, fmt.Sprintf(body, ""))
	if !strings.Contains(textA[0], "Model hash: "+shaA[:10]+", Model: a,") || infoA["sd_model_name"] != "a" || infoA["sd_model_hash"] != shaA[:10] {
		t.Errorf("the default model's infotext %q, info %v %v", textA[0], infoA["sd_model_name"], infoA["sd_model_hash"])
	}
	// per request: b, by its name; the default stays a
	imgB, textB, _ := a1111Run(t, ts.URL, fmt.Sprintf(body, `,"override_settings":{"sd_model_checkpoint":"b"}`))
	if !strings.Contains(textB[0], "Model hash: "+shaB[:10]+", Model: b,") {
		t.Errorf("the override's infotext %q does not name b", textB[0])
	}
	if sameImage(imgA[0], imgB[0]) {
		t.Error("models a and b made the same image: the override did not switch the model")
	}
	checkDefault(titleA)
	if again, _, _ := a1111Run(t, ts.URL, fmt.Sprintf(body, "")); !sameImage(again[0], imgA[0]) {
		t.Error("after an override, the default request no longer runs a")
	}
	// switching the default, by title
	if r := post(t, ts.URL+"/sdapi/v1/options", fmt.Sprintf(`{"sd_model_checkpoint":%q}`, titleB)); r.code != 200 {
		t.Fatalf("options: %d %s", r.code, r.body)
	}
	checkDefault(titleB)
	if imgs, texts, _ := a1111Run(t, ts.URL, fmt.Sprintf(body, "")); !sameImage(imgs[0], imgB[0]) || !strings.Contains(texts[0], "Model: b,") {
		t.Errorf("after switching to b, the default request made another image (%q)", texts[0])
	}
	// the broken file: a clear error for it, and the others still serve
	r = post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(body, `,"override_settings":{"sd_model_checkpoint":"broken"}`))
	if msg, _, param := r.apiErr(t); r.code != 500 || param != "model" || !strings.Contains(msg, titleBroken) || !strings.Contains(msg, "could not be loaded") || strings.Contains(msg, dir) {
		t.Errorf("the broken model: %d %s", r.code, r.body)
	}
	if r := post(t, ts.URL+"/sdapi/v1/options", `{"sd_model_checkpoint":"broken.safetensors"}`); r.code != 500 {
		t.Errorf("switching to the broken model: %d %s", r.code, r.body)
	}
	checkDefault(titleB)
	a1111Run(t, ts.URL, fmt.Sprintf(body, `,"override_settings":{"sd_model_checkpoint":"a"}`))
	if n := l.count("broken.safetensors"); n != 1 {
		t.Errorf("the broken model was tried %d times before a refresh, want 1", n)
	}
	r = post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(body, `,"override_settings":{"sd_model_checkpoint":"nope"}`))
	if msg, _, _ := r.apiErr(t); r.code != 400 || !strings.Contains(msg, titleA) || !strings.Contains(msg, titleB) {
		t.Errorf("an unknown model: %d %s", r.code, r.body)
	}
	// OpenAI: model by name; OpenAI's own names mean the default
	for model, want := range map[string]string{"a": "a", shaA[:10]: "a", "dall-e-3": "b", "": "b"} {
		r := post(t, ts.URL+"/v1/images/generations", fmt.Sprintf(`{"prompt":"x","size":"64x64","quality":"low","model":%q}`, model))
		if r.code != 200 || r.header.Get("Sdpipe-Model") != want {
			t.Errorf("OpenAI model %q: %d, ran %q, want %q", model, r.code, r.header.Get("Sdpipe-Model"), want)
		}
	}
	r = post(t, ts.URL+"/v1/images/generations", `{"prompt":"x","size":"64x64","model":"nope"}`)
	if msg, typ, param := r.apiErr(t); r.code != 400 || typ != "invalid_request_error" || param != "model" || !strings.Contains(msg, "nope") {
		t.Errorf("OpenAI unknown model: %d %s", r.code, r.body)
	}
	if r := get(t, ts.URL+"/v1/models/nope"); r.code != 404 {
		t.Errorf("GET /v1/models/nope: %d", r.code)
	}
	var models struct{ Data []struct{ ID string } }
	get(t, ts.URL+"/v1/models").json(t, &models)
	if len(models.Data) != 3 || models.Data[0].ID != "a" || models.Data[1].ID != "b" {
		t.Errorf("/v1/models: %+v", models)
	}
	// SageMaker: the body's model, or a multi-model endpoint's target
	for _, c := range []struct{ body, header, want string }{
		{`{"prompt":"x","width":64,"height":64,"num_inference_steps":2}`, "a", "a"},
		{`{"prompt":"x","width":64,"height":64,"num_inference_steps":2,"model":"a"}`, "", "a"},
		{`{"prompt":"x","width":64,"height":64,"num_inference_steps":2}`, "", "b"},
	} {
		var hdr []string
		if c.header != "" {
			hdr = []string{sageMakerTargetHeader, c.header}
		}
		r := post(t, ts.URL+"/invocations", c.body, hdr...)
		var out struct {
			GeneratedImages []string `json:"generated_images"`
		}
		r.json(t, &out)
		if r.code != 200 || len(out.GeneratedImages) != 1 {
			t.Fatalf("SageMaker %s (target %q): %d %.300s", c.body, c.header, r.code, r.body)
		}
		if _, text := decodePNG(t, out.GeneratedImages[0]); !strings.Contains(text, "Model: "+c.want+",") {
			t.Errorf("SageMaker %s (target %q) ran %q, want model %s", c.body, c.header, text, c.want)
		}
	}
	if r := post(t, ts.URL+"/invocations", `{"prompt":"x"}`, sageMakerTargetHeader, "nope"); r.code != 400 {
		t.Errorf("SageMaker unknown target model: %d %s", r.code, r.body)
	}
	// a refresh forgets the failure: the broken one is tried again
	if r := post(t, ts.URL+"/sdapi/v1/refresh-checkpoints", ""); r.code != 200 {
		t.Fatalf("refresh-checkpoints: %d %s", r.code, r.body)
	}
	post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(body, `,"override_settings":{"sd_model_checkpoint":"broken"}`))
	if n := l.count("broken.safetensors"); n != 2 {
		t.Errorf("after a refresh the broken model was tried %d times in all, want 2", n)
	}
	if l.count("a") != 1 || l.count("b") != 1 {
		t.Errorf("loads: %v, want each model once (no budget: none evicted)", l.loads)
	}
}

// TestModelsRefresh adds a model to the folder and removes one: a refresh
// lists the new one and forgets the removed one.
func TestModelsRefresh(t *testing.T) {
	src := twoModels(t)
	dir := t.TempDir()
	if err := os.Symlink(filepath.Join(src, "a"), filepath.Join(dir, "a")); err != nil {
		t.Fatal(err)
	}
	l := &loader{}
	reg := newModels(t, dir, 0, l)
	_, ts := newServerOn(t, nil, Config{Models: reg})
	if err := os.Symlink(filepath.Join(src, "b"), filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	names := func() []string {
		var list []map[string]any
		get(t, ts.URL+"/sdapi/v1/sd-models").json(t, &list)
		var out []string
		for _, e := range list {
			out = append(out, e["model_name"].(string))
		}
		return out
	}
	if got := names(); len(got) != 1 {
		t.Fatalf("before the refresh: %v", got)
	}
	post(t, ts.URL+"/sdapi/v1/refresh-checkpoints", "")
	if got := names(); len(got) != 2 || got[1] != "b" {
		t.Fatalf("after adding b: %v", got)
	}
	a1111Run(t, ts.URL, `{"prompt":"x","steps":2,"override_settings":{"sd_model_checkpoint":"b"}}`)
	// A1111's unload-checkpoint closes the idle models; reload-checkpoint
	// loads the default again
	a, _ := reg.find("model", "a")
	b, _ := reg.find("model", "b")
	if r := post(t, ts.URL+"/sdapi/v1/unload-checkpoint", ""); r.code != 200 || reg.loaded(a) != nil || reg.loaded(b) != nil {
		t.Fatalf("unload-checkpoint: %d %s; a loaded %v, b loaded %v", r.code, r.body, reg.loaded(a) != nil, reg.loaded(b) != nil)
	}
	if r := post(t, ts.URL+"/sdapi/v1/reload-checkpoint", ""); r.code != 200 || reg.loaded(a) == nil || l.count("a") != 2 {
		t.Fatalf("reload-checkpoint: %d %s; a loaded %d times", r.code, r.body, l.count("a"))
	}
	if err := os.Remove(filepath.Join(dir, "b")); err != nil {
		t.Fatal(err)
	}
	post(t, ts.URL+"/sdapi/v1/refresh-checkpoints", "")
	if got := names(); len(got) != 1 {
		t.Fatalf("after removing b: %v", got)
	}
	if r := post(t, ts.URL+"/sdapi/v1/txt2img", `{"prompt":"x","steps":2,"override_settings":{"sd_model_checkpoint":"b"}}`); r.code != 400 {
		t.Errorf("the removed model: %d %s", r.code, r.body)
	}
}

// TestModelsBesideEngine serves an Engine given to New beside an empty
// models folder: it is the one model listed, and the default.
func TestModelsBesideEngine(t *testing.T) {
	reg := newModels(t, t.TempDir(), 0, &loader{})
	_, ts := newServerOn(t, openModel(t), Config{Models: reg, ModelName: "tiny", ModelSHA256: strings.Repeat("ab", 32)})
	var list []map[string]any
	get(t, ts.URL+"/sdapi/v1/sd-models").json(t, &list)
	if len(list) != 1 || list[0]["title"] != "tiny [ababababab]" {
		t.Fatalf("sd-models: %v", list)
	}
	if _, texts, _ := a1111Run(t, ts.URL, `{"prompt":"x","steps":2,"override_settings":{"sd_model_checkpoint":"tiny"}}`); !strings.Contains(texts[0], "Model: tiny,") {
		t.Errorf("infotext %q", texts[0])
	}
	if _, err := New(nil, Config{Models: newModels(t, t.TempDir(), 0, &loader{})}); err == nil || !strings.Contains(err.Error(), "no model in") {
		t.Errorf("an empty folder and no Engine: %v", err)
	}
}

// TestModelsConcurrent runs requests for both models at once (b not
// loaded yet): each image comes from the model its request named, and the
// requests for b share one load.
func TestModelsConcurrent(t *testing.T) {
	dir := twoModels(t)
	l := &loader{}
	reg := newModels(t, dir, 0, l)
	_, ts := newServerOn(t, nil, Config{Models: reg})
	var wg sync.WaitGroup
	for i := range 6 {
		model := []string{"a", "b"}[i%2]
		wg.Go(func() {
			r := post(t, ts.URL+"/sdapi/v1/txt2img", fmt.Sprintf(`{"prompt":"x","steps":3,"seed":%d,"override_settings":{"sd_model_checkpoint":%q}}`, i, model))
			if r.code != 200 || !strings.Contains(string(r.body), `Model: `+model+`,`) {
				t.Errorf("request %d for %s: %d %.300s", i, model, r.code, r.body)
			}
		})
	}
	wg.Wait()
	if l.count("a") != 1 || l.count("b") != 1 {
		t.Errorf("loads %v, want one of each model", l.loads)
	}
}

// TestModelsOpenAIGoSDK drives a server with two models with the official
// OpenAI Go SDK (testdata/openai-go, "models" mode): the list, the model
// field, and the errors for an unknown model.
func TestModelsOpenAIGoSDK(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the OpenAI Go SDK: not in -short")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not found in PATH")
	}
	reg := newModels(t, twoModels(t), 0, &loader{})
	_, ts := newServerOn(t, nil, Config{Models: reg, FastSteps: 2})
	dir, err := filepath.Abs("testdata/openai-go")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := runClient(t, dir, 5*time.Minute, goBin, "mod", "download"); err != nil {
		t.Skipf("downloading the pinned OpenAI Go SDK failed (no module proxy?): %v\n%s", err, out)
	}
	out, err := runClient(t, dir, 5*time.Minute, goBin, "run", ".", ts.URL, "models", "a", "b")
	if err != nil || !strings.Contains(out, "all checks passed") {
		t.Fatalf("the OpenAI Go SDK against a server with two models: %v\n%s", err, out)
	}
}

// TestModelsCheckpoint serves a folder holding a single-file checkpoint
// (the shared tiny-sd.safetensors, with its configs) beside an ONNX
// folder: it is listed by its file name and A1111's hash of the file, and
// runs when a request names it.
func TestModelsCheckpoint(t *testing.T) {
	src := twoModels(t)
	ckpt := shareddir.File(t, "reference/tiny-ckpt/tiny-sd.safetensors")
	ckptDir := filepath.Dir(ckpt)
	dir := t.TempDir()
	links := map[string]string{"a": filepath.Join(src, "a"), "tiny-sd.safetensors": ckpt}
	for _, n := range []string{"text_encoder_config.json", "unet_config.json", "vae_config.json"} {
		links[n] = filepath.Join(ckptDir, n) // the checkpoint's configs lie beside it
	}
	for n, target := range links {
		if err := os.Symlink(target, filepath.Join(dir, n)); err != nil {
			t.Fatal(err)
		}
	}
	cache, tok := t.TempDir(), shareddir.File(t, "clip-tokenizer")
	reg, err := NewModels(ModelsConfig{Dir: dir, Open: func(ctx context.Context, path string) (Engine, error) {
		opts := []sd.Option{sd.WithThreads(sd.UNet, 1)}
		if strings.HasSuffix(path, ".safetensors") {
			opts = append(opts, sd.WithTokenizer(tok), sd.WithCheckpointCache(cache))
		}
		return sd.Open(ctx, path, opts...)
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	_, ts := newServerOn(t, nil, Config{Models: reg})
	sha := fileSHA(t, filepath.Join(ckptDir, "tiny-sd.safetensors"))
	title := "tiny-sd.safetensors [" + sha[:10] + "]"
	var list []map[string]any
	get(t, ts.URL+"/sdapi/v1/sd-models").json(t, &list)
	if len(list) != 2 || list[1]["title"] != title || list[1]["model_name"] != "tiny-sd" || list[1]["sha256"] != sha {
		t.Fatalf("sd-models: %v, want a, then %s", list, title)
	}
	_, texts, _ := a1111Run(t, ts.URL, fmt.Sprintf(`{"prompt":"a cat","steps":2,"width":64,"height":64,"override_settings":{"sd_model_checkpoint":%q}}`, title))
	if !strings.Contains(texts[0], "Model hash: "+sha[:10]+", Model: tiny-sd,") {
		t.Errorf("the checkpoint's infotext: %q", texts[0])
	}
}

// TestModelsEviction loads models under a budget that holds one: loading
// b evicts the idle a, a request for b waits while a is busy (a busy model
// is never evicted), and requests for a model being loaded share its one
// load.
func TestModelsEviction(t *testing.T) {
	dir := twoModels(t)
	found, err := sd.ListModels(dir)
	if err != nil {
		t.Fatal(err)
	}
	size := map[string]int64{}
	for _, f := range found {
		size[f.Name] = f.Size
	}
	sizeA, sizeB := size["a"], size["b"]
	if sizeA == 0 || sizeB == 0 {
		t.Fatalf("models listed: %+v", found)
	}
	l := &loader{gate: make(chan struct{})}
	reg := newModels(t, dir, max(sizeA, sizeB)+sizeA/2, l) // one model at a time
	a, _ := reg.find("model", "a")
	b, _ := reg.find("model", "b")

	// duplicate-load suppression: four requests for a, one load
	type got struct {
		eng     Engine
		release func()
		err     error
	}
	results := make(chan got, 4)
	for range 4 {
		go func() {
			e, rel, err := reg.acquire(t.Context(), a)
			results <- got{e, rel, err}
		}()
	}
	waitFor(t, "the load of a to begin", func() bool { return l.began.Load() == 1 })
	time.Sleep(50 * time.Millisecond) // the other three find it loading
	close(l.gate)
	var leases []got
	for range 4 {
		g := <-results
		if g.err != nil {
			t.Fatal(g.err)
		}
		leases = append(leases, g)
	}
	if l.count("a") != 1 || l.began.Load() != 1 {
		t.Fatalf("four requests for a model being loaded loaded it %d times", l.count("a"))
	}
	for _, g := range leases[1:] {
		if g.eng != leases[0].eng {
			t.Fatal("the requests that waited for the load got another engine")
		}
	}
	// a is busy: a request for b waits, and a stays loaded
	bDone := make(chan got, 1)
	go func() {
		e, rel, err := reg.acquire(t.Context(), b)
		bDone <- got{e, rel, err}
	}()
	time.Sleep(200 * time.Millisecond)
	select {
	case g := <-bDone:
		t.Fatalf("b was loaded while a, which the budget has no room beside, was busy (err %v)", g.err)
	default:
	}
	if reg.loaded(a) == nil {
		t.Fatal("a busy model was evicted")
	}
	// a still serves while b waits
	res, err := leases[0].eng.(*sd.Model).Generate(t.Context(), sd.Request{Prompt: "x", Steps: 2})
	if err != nil || len(res.Images) != 1 {
		t.Fatalf("the busy model: %v", err)
	}
	for _, g := range leases {
		g.release()
	}
	var gb got
	select {
	case gb = <-bDone:
	case <-time.After(time.Minute):
		t.Fatal("b was not loaded once a was idle")
	}
	if gb.err != nil {
		t.Fatal(gb.err)
	}
	if reg.loaded(a) != nil || reg.loaded(b) == nil {
		t.Fatal("loading b did not evict the idle a")
	}
	if _, err := leases[0].eng.(*sd.Model).Generate(t.Context(), sd.Request{Prompt: "x", Steps: 1}); !errors.Is(err, sd.ErrClosed) {
		t.Errorf("the evicted model still runs: %v", err)
	}
	gb.release()
	// a comes back on demand (a second load), evicting b
	_, rel, err := reg.acquire(t.Context(), a)
	if err != nil {
		t.Fatal(err)
	}
	rel()
	if l.count("a") != 2 || reg.loaded(b) != nil {
		t.Errorf("a loaded %d times, b loaded %v; want 2 and b evicted", l.count("a"), reg.loaded(b) != nil)
	}
	// a request that waits for room gives up with its context
	_, relA, _ := reg.acquire(t.Context(), a)
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	if _, _, err := reg.acquire(ctx, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("waiting for room past the deadline: %v", err)
	}
	relA()
	// a model larger than the whole budget: a clear error
	small := newModels(t, dir, sizeA/2, &loader{})
	sa, _ := small.find("model", "a")
	if _, _, err := small.acquire(t.Context(), sa); err == nil || !strings.Contains(err.Error(), "larger than the models' memory budget") {
		t.Errorf("a model over the budget: %v", err)
	}
}

// sameImage reports whether two images have the same pixels.
func sameImage(a, b image.Image) bool {
	if a.Bounds() != b.Bounds() {
		return false
	}
	for y := a.Bounds().Min.Y; y < a.Bounds().Max.Y; y++ {
		for x := a.Bounds().Min.X; x < a.Bounds().Max.X; x++ {
			r1, g1, b1, _ := a.At(x, y).RGBA()
			r2, g2, b2, _ := b.At(x, y).RGBA()
			if r1 != r2 || g1 != g2 || b1 != b2 {
				return false
			}
		}
	}
	return true
}
