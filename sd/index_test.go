package sd

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseIndex(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    ModelIndex
		wantErr string
	}{
		{
			name: "legacy",
			in: `{"_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": "0.35.2",
				"safety_checker": [null, null], "requires_safety_checker": false,
				"unet": ["diffusers", "OnnxRuntimeModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
				"_name_or_path": "x", "odd": [1, 2], "three": ["a", "b", "c"]}`,
			want: ModelIndex{
				ClassName: "OnnxStableDiffusionPipeline", DiffusersVersion: "0.35.2",
				Components: map[string]IndexEntry{
					"safety_checker": {},
					"unet":           {Library: "diffusers", Class: "OnnxRuntimeModel"},
					"tokenizer":      {Library: "transformers", Class: "CLIPTokenizer"},
				},
			},
		},
		{name: "empty object", in: `{}`, want: ModelIndex{Components: map[string]IndexEntry{}}},
		{name: "null", in: `null`, wantErr: "not a JSON object"},
		{name: "array", in: `[]`, wantErr: "not a JSON object"},
		{name: "class name not a string", in: `{"_class_name": 3}`, wantErr: "_class_name is 3, want a string"},
		{name: "syntax", in: "{\n\"unet\": [\"a\" \"b\"]}", wantErr: "malformed JSON at line 2, column 14: invalid character '\"' after array element"},
		{name: "truncated", in: `{"unet": `, wantErr: "malformed JSON at line 1, column 9: unexpected end of JSON input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseIndex([]byte(tt.in))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("parseIndex error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parseIndex (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPosition(t *testing.T) {
	data := []byte("ab\ncde\n\nf")
	tests := []struct {
		off  int64
		want string
	}{
		{-1, "line 1, column 1"},
		{0, "line 1, column 1"},
		{2, "line 1, column 3"},
		{3, "line 2, column 1"},
		{5, "line 2, column 3"},
		{8, "line 4, column 1"},
		{9, "line 4, column 2"},
		{100, "line 4, column 2"},
	}
	for _, tt := range tests {
		if got := position(data, tt.off); got != tt.want {
			t.Errorf("position(%d) = %q, want %q", tt.off, got, tt.want)
		}
	}
}

// FuzzParseIndex checks that no model_index.json makes parseIndex panic,
// and that errors keep the problem wrapper.
func FuzzParseIndex(f *testing.F) {
	for _, s := range []string{`{}`, `null`, `{"_class_name": "x", "unet": ["diffusers", null]}`, `{"a": [`, `[1]`, `"s"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseIndex(data)
		if err != nil {
			var p *problem
			if !errors.As(err, &p) && err.Error() == "" {
				t.Errorf("empty error for %q", data)
			}
			return
		}
		if idx.Components == nil {
			t.Errorf("nil Components for %q", data)
		}
	})
}
