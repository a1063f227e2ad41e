package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, json, want string
	}{
		{"unknown field", `{"subjects":["a"],"styles":["b"],"stpes":3}`, `unknown field "stpes"`},
		{"trailing data", `{"subjects":["a"],"styles":["b"]} {}`, "trailing data"},
		{"wrong type", `{"subjects":"a","styles":["b"]}`, "cannot unmarshal"},
		{"not json", `subjects: [a]`, "invalid character"},
		{"no subjects", `{"styles":["b"]}`, "no subjects"},
		{"no styles", `{"subjects":["a"]}`, "no styles"},
		{"empty subject", `{"subjects":[" "],"styles":["b"]}`, "empty subject"},
		{"duplicate style", `{"subjects":["a"],"styles":["b","b"]}`, `duplicate style "b"`},
		{"negative images", `{"subjects":["a"],"styles":["b"],"images":-1}`, "images -1"},
		{"negative seed", `{"subjects":["a"],"styles":["b"],"seed":-5}`, "seed -5"},
		{"bad size", `{"subjects":["a"],"styles":["b"],"width":60}`, "size 60x0"},
		{"bad steps", `{"subjects":["a"],"styles":["b"],"steps":-1}`, "steps -1"},
		{"bad guidance", `{"subjects":["a"],"styles":["b"],"guidance":1000}`, "guidance 1000"},
		{"bad generator", `{"subjects":["a"],"styles":["b"],"generator":"jax"}`, "generator"},
		{"template", `{"subjects":["a"],"styles":["b"],"template":"{style} only"}`, "lacks {subject}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig([]byte(tc.json))
			if err == nil {
				err = c.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("errors.Is(%v, ErrConfig) = false", err)
			}
		})
	}
}

func TestConfigDefaultsAndItems(t *testing.T) {
	c, err := parseConfig([]byte(`{"subjects":["a fox","a/fox"],"styles":["Hokusai","Van Gogh"],"images":3,"seed":9}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Template != DefaultTemplate || c.Generator != "numpy" {
		t.Errorf("defaults: template %q generator %q", c.Template, c.Generator)
	}
	items := c.Items()
	if len(items) != 2*2*3 {
		t.Fatalf("%d items, want 12", len(items))
	}
	keys, files := map[string]bool{}, map[string]bool{}
	for i, it := range items {
		if it.Index != i {
			t.Errorf("item %d has index %d", i, it.Index)
		}
		if want := it.Subject + " by " + it.Style; it.Prompt != want {
			t.Errorf("prompt %q, want %q", it.Prompt, want)
		}
		if it.Seed != DeriveSeed(9, it.Subject, it.Style, it.Replica) || it.Seed < 0 || it.Seed >= 1<<32 {
			t.Errorf("item %d seed %d", i, it.Seed)
		}
		if keys[it.Key] || files[it.File] {
			t.Errorf("item %d: key %s or file %s not unique", i, it.Key, it.File)
		}
		keys[it.Key], files[it.File] = true, true
	}
	// "a fox" and "a/fox" share a slug: the key keeps the files apart
	if !strings.HasPrefix(items[0].File, "images/hokusai/a-fox-0-") || !strings.HasPrefix(items[6].File, "images/hokusai/a-fox-0-") {
		t.Errorf("files %s, %s", items[0].File, items[6].File)
	}
}

func TestDeriveSeed(t *testing.T) {
	base := DeriveSeed(1, "fox", "Hokusai", 0)
	if DeriveSeed(1, "fox", "Hokusai", 0) != base {
		t.Fatal("not deterministic")
	}
	for name, s := range map[string]int64{
		"base":    DeriveSeed(2, "fox", "Hokusai", 0),
		"subject": DeriveSeed(1, "fox2", "Hokusai", 0),
		"style":   DeriveSeed(1, "fox", "Hokusai2", 0),
		"replica": DeriveSeed(1, "fox", "Hokusai", 1),
		"shifted": DeriveSeed(1, "fox\x00Hokusai", "", 0), // fields are separated
	} {
		if s == base {
			t.Errorf("changing %s keeps the seed %d", name, s)
		}
	}
	// an item's seed does not depend on the rest of the grid
	small := Config{Subjects: []string{"fox"}, Styles: []string{"Hokusai"}, Images: 2, Seed: 1}
	big := Config{Subjects: []string{"owl", "fox"}, Styles: []string{"Monet", "Hokusai"}, Images: 2, Seed: 1}
	for _, c := range []*Config{&small, &big} {
		if err := c.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	seeds := map[string]int64{}
	for _, it := range big.Items() {
		seeds[it.Key] = it.Seed
	}
	for _, it := range small.Items() {
		if seeds[it.Key] != it.Seed {
			t.Errorf("%s #%d: seed %d alone, %d in a bigger grid", it.Prompt, it.Replica, it.Seed, seeds[it.Key])
		}
	}
}

func TestOverlay(t *testing.T) {
	file := Config{Subjects: []string{"a"}, Styles: []string{"b"}, Steps: 30, Seed: 5, Scheduler: "Euler"}
	flags := Config{Steps: 4, Seed: 0, Images: 1, Generator: "numpy"}
	got := overlay(file, flags, map[string]bool{"steps": true, "seed": true})
	want := file
	want.Steps, want.Seed = 4, 0
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("overlay (-want +got):\n%s", d)
	}
}

func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("example.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if n := len(c.Items()); n != 3*3*4 {
		t.Errorf("example.json has %d items, want 36", n)
	}
}
