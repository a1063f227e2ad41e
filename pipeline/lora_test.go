package pipeline

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExtractLoRAs(t *testing.T) {
	tests := []struct {
		prompt, rest string
		loras        []LoRA
		bad          bool
	}{
		{"a cat", "a cat", nil, false},
		{"<lora:style:0.8> a cat", " a cat", []LoRA{{"style", 0.8}}, false},
		{"a <lora:a> cat <lyco:b:-1.5>", "a  cat ", []LoRA{{"a", 1}, {"b", -1.5}}, false},
		{"(a cat:1.2) <lora:my lora v2:1>", "(a cat:1.2) ", []LoRA{{"my lora v2", 1}}, false},
		{"<lora:a:0.5:0.7>", "", nil, true},
		{"<lora:a:x>", "", nil, true},
	}
	for _, tc := range tests {
		rest, loras, err := ExtractLoRAs(tc.prompt)
		if (err != nil) != tc.bad {
			t.Errorf("%q: error %v", tc.prompt, err)
			continue
		}
		if tc.bad {
			continue
		}
		if rest != tc.rest || !cmp.Equal(loras, tc.loras) {
			t.Errorf("%q: %q %v, want %q %v", tc.prompt, rest, loras, tc.rest, tc.loras)
		}
	}
}

// TestLoRAsNeedSupport: a request with LoRAs on components that cannot
// apply them is refused before it is queued.
func TestLoRAsNeedSupport(t *testing.T) {
	p, err := New(referenceComponents(t), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, r := range []Request{{Prompt: "<lora:x:1> a cat"}, {Prompt: "a cat", LoRAs: []LoRA{{"x", 1}}}} {
		_, err := p.Submit(t.Context(), r)
		re, ok := err.(*RequestError)
		if !ok || re.Field != "LoRAs" {
			t.Errorf("%+v: %v, want a RequestError on LoRAs", r, err)
		}
	}
}
