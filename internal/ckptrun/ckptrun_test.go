package ckptrun

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sdpipe/sdpipe/internal/ckpt"
	"github.com/sdpipe/sdpipe/internal/ort"
	"github.com/sdpipe/sdpipe/internal/shareddir"
	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/pipeline"
)

type setup struct {
	comps  pipeline.Components
	loraIn string // the LoRA folder
}

// open builds the tiny checkpoint with LoRA branches and opens it with a
// LoRA folder holding tiny-lora (as a link named tiny-lora.safetensors).
func open(t *testing.T) setup {
	t.Helper()
	b, _ := buildTiny(t, true)
	dir := t.TempDir()
	if err := os.Symlink(shareddir.File(t, "reference/tiny-lora/tiny-lora.safetensors"), filepath.Join(dir, "tiny-lora.safetensors")); err != nil {
		t.Fatal(err)
	}
	c, err := Open(t.Context(), b, Options{LoRADir: dir, ORT: func(string) ort.Options { return ort.Options{IntraOpThreads: 1} }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if !slices.Equal(c.LoRAs.Names(), []string{"tiny-lora"}) {
		t.Errorf("LoRA names %v", c.LoRAs.Names())
	}
	return setup{comps: c.Components, loraIn: dir}
}

// buildTiny builds ../shared's tiny checkpoint with
// room for extra tokens, and LoRA branches when lora is set, after
// skipping the test without ONNX Runtime. It returns the build and the
// checkpoint's path.
func buildTiny(t *testing.T, lora bool) (*ckpt.Built, string) {
	t.Helper()
	testenv.RequireORT(t)
	ckptPath := shareddir.File(t, "reference/tiny-ckpt/tiny-sd.safetensors")
	b, err := ckpt.Build(t.Context(), ckptPath, ckpt.BuildOptions{
		CacheDir:     t.TempDir(),
		Config:       &ckpt.Config{TextHeads: map[ckpt.Component]int{ckpt.TextEncoder: 4}},
		TokenizerDir: shareddir.File(t, "clip-tokenizer"),
		LoRABranches: lora,
		ExtraTokens:  true,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b, ckptPath
}

func request(ref *testenv.TinyReference) pipeline.Request {
	return pipeline.Request{Prompt: ref.Call.Prompt, Width: ref.Call.Width, Height: ref.Call.Height, Steps: ref.Call.Steps,
		GuidanceScale: new(ref.Call.GuidanceScale), Latents: ref.InitialLatents}
}

// TestPerRequestLoRA applies tiny-lora per request to one set of sessions
// built with LoRA branches: by the prompt tag <lora:tiny-lora:1.0> and by
// the Request field at 0.5, then not at all, and reproduces diffusers'
// images of the merged models (reference-m*.json) and of the base model
// within 1e-4. Then two requests with different LoRAs share UNet calls
// (dynamic batching) and still match their references.
func TestPerRequestLoRA(t *testing.T) {
	s := open(t)
	p, err := pipeline.New(s.comps, pipeline.Options{MaxBatch: 2, MaxBatchWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	m1, m05, base := testenv.TinyLoRAReference(t, "1.0"), testenv.TinyLoRAReference(t, "0.5"), testenv.LoadTinyReference(t)
	tagged := request(m1)
	tagged.Prompt = "<lora:tiny-lora:1.0>" + tagged.Prompt
	field := request(m05)
	field.LoRAs = []pipeline.LoRA{{Name: "tiny-lora", Multiplier: 0.5}}
	for _, tc := range []struct {
		name string
		req  pipeline.Request
		ref  *testenv.TinyReference
	}{{"prompt tag m=1.0", tagged, m1}, {"Request.LoRAs m=0.5", field, m05}, {"none", request(base), base}, {"tag again m=1.0", tagged, m1}} {
		res, err := p.Generate(t.Context(), tc.req)
		if err != nil {
			t.Fatal(err)
		}
		d := testenv.MaxAbsDiff(res.Pixels.Data().([]float32), tc.ref.ORT.Image)
		if d > 1e-4 {
			t.Errorf("%s: image differs from diffusers' by %g", tc.name, d)
		} else {
			t.Logf("%s: image max |Δ| %.2g", tc.name, d)
		}
		if res.Request.Prompt != tc.req.Prompt { // what sd's infotext is made from
			t.Errorf("%s: resolved prompt %q, not the prompt as given", tc.name, res.Request.Prompt)
		}
	}

	// Different LoRAs in one batch.
	type out struct {
		res *pipeline.Result
		err error
	}
	ch := make(chan out, 2)
	reqs := []pipeline.Request{tagged, field}
	refs := []*testenv.TinyReference{m1, m05}
	for _, r := range reqs {
		go func() {
			res, err := p.Generate(t.Context(), r)
			ch <- out{res, err}
		}()
	}
	batched := 0
	for range reqs {
		o := <-ch
		if o.err != nil {
			t.Fatal(o.err)
		}
		if o.res.Metrics.BatchSize == 2 {
			batched++
		}
		img := o.res.Pixels.Data().([]float32)
		d1, d2 := testenv.MaxAbsDiff(img, refs[0].ORT.Image), testenv.MaxAbsDiff(img, refs[1].ORT.Image)
		if min(d1, d2) > 1e-4 {
			t.Errorf("batched request matches neither reference (%g, %g)", d1, d2)
		}
	}
	t.Logf("%d of 2 requests with different LoRAs shared UNet calls", batched)
	if batched != 2 {
		t.Log("the two requests did not meet in one batch (timing); the row-mixing itself is covered by ckpt.TestBranchesMatchMerged")
	}
}

func TestLoRAErrors(t *testing.T) {
	s := open(t)
	p, err := pipeline.New(s.comps, pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ref := testenv.LoadTinyReference(t)
	r := request(ref)
	r.Prompt = "<lora:missing:1> " + r.Prompt
	_, err = p.Generate(t.Context(), r)
	if !errors.Is(err, pipeline.ErrInvalidRequest) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("unknown LoRA: %v", err)
	}
	r = request(ref)
	r.Prompt = "<lora:tiny-lora:x> " + r.Prompt
	if _, err = p.Generate(t.Context(), r); !errors.Is(err, pipeline.ErrInvalidRequest) {
		t.Errorf("bad multiplier: %v", err)
	}
}
