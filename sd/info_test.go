package sd_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/sdpipe/sdpipe/internal/testenv"
	"github.com/sdpipe/sdpipe/sd"
)

// TestModelInfo checks that Open takes a folder's defaults and name from
// its sdpipe.json, that options override them, and that a broken file is
// a FolderError naming it.
func TestModelInfo(t *testing.T) {
	testenv.RequireORT(t)
	dir := referenceCopy(t)
	plain, err := sd.Open(t.Context(), dir, sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	if d := plain.Defaults(); d != (sd.Defaults{Width: 512, Height: 512, GuidanceScale: 7.5}) || plain.Info().Name != "model" {
		t.Errorf("without sdpipe.json: defaults %+v, name %q; want diffusers' and the folder's name", d, plain.Info().Name)
	}
	plain.Close()

	writeFile(t, dir, "sdpipe.json", `{"name": "tiny, ref", "defaults": {"width": 32, "height": 48, "guidance_scale": 3},
		"example_prompts": ["a horse"], "prompt_words": {"animal": ["horse"]}, "future_field": 1}`)
	m, err := sd.Open(t.Context(), dir, sd.WithoutVAEEncoder())
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	info := m.Info()
	if info.Name != "tiny, ref" || info.Defaults != (sd.Defaults{Width: 32, Height: 48, GuidanceScale: 3}) || info.ExamplePrompts[0] != "a horse" || info.PromptWords["animal"][0] != "horse" {
		t.Errorf("Info() = %+v", info)
	}
	res, err := m.Generate(t.Context(), sd.Request{Prompt: "a horse", Steps: 2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if r := res.Request; r.Width != 32 || r.Height != 48 || *r.GuidanceScale != 3 || !strings.Contains(res.Infotexts[0], `Model: "tiny, ref"`) {
		t.Errorf("request resolved to %dx%d at guidance %v, infotext %q", r.Width, r.Height, *r.GuidanceScale, res.Infotexts[0])
	}
	over, err := sd.Open(t.Context(), dir, sd.WithoutVAEEncoder(), sd.WithDefaults(sd.Defaults{GuidanceScale: 5}))
	if err != nil {
		t.Fatal(err)
	}
	if d := over.Defaults(); d != (sd.Defaults{Width: 32, Height: 48, GuidanceScale: 5}) {
		t.Errorf("WithDefaults over sdpipe.json: %+v", d)
	}
	over.Close()

	for content, want := range map[string]string{
		`{"defaults": {"width": 30}}`:          "size 30x0 is not a multiple of 8",
		`{"defaults": {"guidance_scale": -1}}`: "guidance_scale -1",
		`{"name": 3}`:                          "unexpected JSON",
		`{"defaults": `:                        "malformed JSON",
	} {
		writeFile(t, dir, "sdpipe.json", content)
		_, err := sd.OpenFolder(t.Context(), dir)
		fe, ok := errors.AsType[*sd.FolderError](err)
		if !ok || fe.File != "sdpipe.json" || !strings.Contains(err.Error(), want) {
			t.Errorf("sdpipe.json %s: %v, want a FolderError on sdpipe.json saying %q", content, err, want)
		}
	}
}
