package tokenizer

import (
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"
)

func TestParityPublic(t *testing.T) {
	if unicode.Version != unicodeTablesVersion {
		t.Errorf("Go unicode tables are %s, newInUnicode15 was made for %s: rerun testdata/unicode14", unicode.Version, unicodeTablesVersion)
	}
	tok := realCLIP(t)
	cases := refCases(t)
	fails := 0
	for _, rc := range cases {
		got := tok.Encode(rc.Prompt)
		if diff := cmp.Diff(rc.IDs, got); diff != "" {
			fails++
			t.Errorf("Encode(%q) mismatch (-want +got):\n%s\ntokens: %q", rc.Prompt, diff, rc.Tokens)
		}
		if got := tok.EncodeUntruncated(rc.Prompt); !cmp.Equal(rc.IDsUntruncated, got) {
			fails++
			t.Errorf("EncodeUntruncated(%q) mismatch (-want +got):\n%s", rc.Prompt, cmp.Diff(rc.IDsUntruncated, got))
		}
	}
	t.Logf("%d prompts, %d mismatches", len(cases), fails)
}
