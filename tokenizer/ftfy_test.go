package tokenizer

import (
	"slices"
	"testing"
)

func TestFixText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain text", "plain text"},
		{"salt &amp; pepper", "salt & pepper"},
		{"tom &amp;amp; jerry", "tom & jerry"}, // fixed until stable
		{"&lt;tag&gt;", "<tag>"},
		{"<b>&amp;</b>", "<b>&amp;</b>"},           // a '<' turns HTML decoding off
		{"a &amp;\n<b>\n&amp;", "a &\n<b>\n&amp;"}, // ... for the rest of the text
		{"&NTILDE; &ntilde;", "Ñ ñ"},
		{"&LTIMES;", "&LTIMES;"}, // its upper-case form decodes otherwise ("&LT")
		{"&nosuch; &ampx;", "&nosuch; &ampx;"},
		{"&#39;q&#39; &#x41; &#65abc;", "'q' A &#65abc;"},
		{"&#128; &#1;x &#0;", "€ x \uFFFD"},
		{"\x1b[31mred\x1b[0m", "red"},
		{"bell\x07 bom\ufeff ff\x0c", "bell bom ff\x0c"},
		{"ﬁne ﬂower", "fine flower"},
		{"ＦＵＬＬ\u3000１２", "FULL 12"},
		{"“quoted” ‘single’", "\"quoted\" 'single'"},
		{"a\u0085b\r\nc\rd\u2028e", "a…b\nc\nd\ne"}, // C1 controls are cp1252 first
		{"cafe\u0301", "café"},
	}
	for _, tt := range tests {
		if got := fixText(tt.in); got != tt.want {
			t.Errorf("fixText(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// ftfyCLIP is realCLIP with ftfy's text fixing.
var ftfyCLIP = onceCLIP(func(dir string) (*CLIP, error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	cfg.Ftfy = true
	return LoadWith(dir, cfg)
})

func TestFtfyDiffers(t *testing.T) {
	plain, ftfy := realCLIP(t), ftfyCLIP(t)
	// Without ftfy, BasicTokenizer keeps entities and spaces CJK; with it,
	// entities decode and CJK runs stay one word.
	if got, want := ftfy.EncodeUntruncated("&amp;"), plain.EncodeUntruncated("&"); !slices.Equal(got, want) {
		t.Errorf("ftfy &amp; = %v, want the ids of & %v", got, want)
	}
	if a, b := ftfy.EncodeUntruncated("東京"), plain.EncodeUntruncated("東京"); slices.Equal(a, b) {
		t.Errorf("CJK tokenized the same with and without ftfy: %v", a)
	}
}
