package tokenizer

import (
	"html"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

// This file ports the parts of ftfy.fix_text (ftfy 6.3, default settings)
// that CLIPTokenizer uses when ftfy is installed:
// whitespace_clean(ftfy.fix_text(text)).lower(). Mojibake repair
// (fix_encoding, which guesses from a badness heuristic whether text was
// decoded with the wrong codec) is not ported: such text is left as is.

// ftfyMaxPasses bounds the fix-until-stable loop; ftfy has no bound, and
// each pass undoes one level of nested HTML escaping.
const ftfyMaxPasses = 32

// ftfyMaxSegment is ftfy's max_decode_length in code points.
const ftfyMaxSegment = 1_000_000

// appendFtfy appends whitespace_clean(fix_text(s)).lower() to dst, except
// that white space is mapped to single spaces without collapsing runs (the
// pre-tokenizer skips them).
func appendFtfy(dst []byte, s string) []byte {
	fixed := fixText(s)
	b := make([]byte, 0, len(fixed))
	for _, r := range fixed {
		if isPySpace(r) {
			b = append(b, ' ')
		} else {
			b = utf8.AppendRune(b, r)
		}
	}
	return appendLower(dst, b)
}

// fixText is ftfy.fix_text: the text is fixed line by line; HTML entities
// are decoded ("auto") until a line contains '<'.
func fixText(text string) string {
	var out strings.Builder
	unescape := true
	for pos := 0; pos < len(text); {
		end := strings.IndexByte(text[pos:], '\n') + 1
		if end == 0 {
			end = len(text) - pos
		}
		end += pos
		if n := utf8.RuneCountInString(text[pos:end]); n > ftfyMaxSegment {
			end = pos
			for range ftfyMaxSegment {
				_, size := utf8.DecodeRuneInString(text[end:])
				end += size
			}
		}
		seg := text[pos:end]
		if unescape && strings.Contains(seg, "<") {
			unescape = false
		}
		out.WriteString(fixSegment(seg, unescape))
		pos = end
	}
	return out.String()
}

// fixSegment applies ftfy's fixers in order until the text stops changing.
func fixSegment(text string, unescape bool) string {
	for range ftfyMaxPasses {
		orig := text
		if unescape {
			text = unescapeHTML(text)
		}
		text = strings.Map(fixC1Control, text)
		text = fixLatinLigatures(text)
		text = strings.Map(fixWidth, text)
		text = strings.Map(uncurlQuote, text)
		text = fixLineBreaks(text)
		text = removeTerminalEscapes(text)
		text = strings.Map(removeControl, text)
		text = norm.NFC.String(text)
		if text == orig {
			break
		}
	}
	return text
}

// cp1252C1 maps U+0080..U+009F to what the byte decodes to in
// windows-1252 (ftfy's "sloppy" codec keeps the five undefined bytes).
var cp1252C1 = [32]rune{
	0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
	0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0x8D, 0x017D, 0x8F,
	0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
	0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
}

func fixC1Control(r rune) rune {
	if 0x80 <= r && r <= 0x9F {
		return cp1252C1[r-0x80]
	}
	return r
}

var ligatures = map[rune]string{
	'Ĳ': "IJ", 'ĳ': "ij", 'ŉ': "ʼn", 'Ǳ': "DZ", 'ǲ': "Dz", 'ǳ': "dz",
	'Ǆ': "DŽ", 'ǅ': "Dž", 'ǆ': "dž", 'Ǉ': "LJ", 'ǈ': "Lj", 'ǉ': "lj",
	'Ǌ': "NJ", 'ǋ': "Nj", 'ǌ': "nj", 'ﬀ': "ff", 'ﬁ': "fi", 'ﬂ': "fl",
	'ﬃ': "ffi", 'ﬄ': "ffl", 'ﬅ': "ſt", 'ﬆ': "st",
}

func fixLatinLigatures(s string) string {
	i := strings.IndexFunc(s, func(r rune) bool { _, ok := ligatures[r]; return ok })
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.WriteString(s[:i])
	for _, r := range s[i:] {
		if l, ok := ligatures[r]; ok {
			b.WriteString(l)
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// fixWidth maps U+3000 to a space and each of U+FF01..U+FFEF to its NFKC
// form when that is a single character (ftfy's WIDTH_MAP).
func fixWidth(r rune) rune {
	if r == 0x3000 {
		return ' '
	}
	if r < 0xFF01 || r > 0xFFEF {
		return r
	}
	var buf [utf8.UTFMax]byte
	k := norm.NFKC.Bytes(buf[:utf8.EncodeRune(buf[:], r)])
	if m, size := utf8.DecodeRune(k); size == len(k) {
		return m
	}
	return r
}

func uncurlQuote(r rune) rune {
	switch {
	case r == 0x02BC || (0x2018 <= r && r <= 0x201B):
		return '\''
	case 0x201C <= r && r <= 0x201F:
		return '"'
	}
	return r
}

func fixLineBreaks(s string) string {
	if !strings.ContainsAny(s, "\r\u2028\u2029\u0085") {
		return s
	}
	return strings.NewReplacer("\r\n", "\n", "\r", "\n", "\u2028", "\n", "\u2029", "\n", "\u0085", "\n").Replace(s)
}

// removeTerminalEscapes deletes ANSI sequences \x1b[ (\d|;)* [a-zA-Z].
func removeTerminalEscapes(s string) string {
	if !strings.Contains(s, "\x1b[") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "\x1b[") {
			j := i + 2
			for j < len(s) {
				r, size := utf8.DecodeRuneInString(s[j:])
				if r != ';' && !unicode.Is(unicode.Nd, r) {
					break
				}
				j += size
			}
			if j < len(s) && (('a' <= s[j] && s[j] <= 'z') || ('A' <= s[j] && s[j] <= 'Z')) {
				i = j + 1
				continue
			}
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// removeControl drops ftfy's CONTROL_CHARS.
func removeControl(r rune) rune {
	switch {
	case r <= 0x08, r == 0x0B, 0x0E <= r && r <= 0x1F, r == 0x7F,
		0x206A <= r && r <= 0x206F, r == 0xFEFF, 0xFFF9 <= r && r <= 0xFFFC:
		return -1
	}
	return r
}

// unescapeHTML decodes the entities matching &#?[0-9A-Za-z]{1,24}; as
// ftfy.fixes.unescape_html does: HTML5 named entities (and upper-cased
// forms of lower-case ones, such as &NTILDE;), and numeric references that
// decode completely.
func unescapeHTML(s string) string {
	if !strings.Contains(s, "&") {
		return s
	}
	var b strings.Builder
	last := 0
	for i := 0; i < len(s); i++ {
		if s[i] != '&' {
			continue
		}
		j := i + 1
		if j < len(s) && s[j] == '#' {
			j++
		}
		k := j
		for k < len(s) && k-j < 24 && isASCIIAlnum(s[k]) {
			k++
		}
		if k == j || k >= len(s) || s[k] != ';' {
			continue
		}
		m := s[i : k+1]
		rep, ok := decodeEntity(m)
		if !ok {
			continue
		}
		b.WriteString(s[last:i])
		b.WriteString(rep)
		last = k + 1
		i = k
	}
	if last == 0 {
		return s
	}
	b.WriteString(s[last:])
	return b.String()
}

func isASCIIAlnum(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z')
}

// decodeEntity decodes one "&...;" match, reporting false to keep it.
func decodeEntity(m string) (string, bool) {
	if strings.HasPrefix(m, "&#") {
		return decodeNumericRef(m[2 : len(m)-1])
	}
	if v, ok := namedEntity(m); ok {
		return v, true
	}
	name := m[1 : len(m)-1]
	if lower := strings.ToLower(name); lower != name && strings.ToUpper(name) == name && html.UnescapeString(m) == m {
		if v, ok := namedEntity("&" + lower + ";"); ok {
			return pyUpper(v), true
		}
	}
	return "", false
}

// namedEntity decodes "&name;" when name; is an HTML5 entity. Go's
// html.UnescapeString also decodes prefixes like "&amp" of unknown names;
// those results keep at least one name character and the semicolon, while
// entity values are one or two characters.
func namedEntity(m string) (string, bool) {
	v := html.UnescapeString(m)
	if v == m || utf8.RuneCountInString(v) > 2 {
		return "", false
	}
	return v, true
}

// pyUpper is Python's str.upper for entity values: full case mapping for
// the few values whose upper case is longer.
func pyUpper(s string) string {
	switch s {
	case "ß":
		return "SS"
	case "ﬀ":
		return "FF"
	case "ﬁ":
		return "FI"
	case "ﬂ":
		return "FL"
	case "ﬃ":
		return "FFI"
	case "ﬄ":
		return "FFL"
	case "ŉ":
		return "ʼN"
	}
	return strings.ToUpper(s)
}

// pyInvalidCharrefs is html._invalid_charrefs of CPython.
var pyInvalidCharrefs = map[int64]string{0x00: "\uFFFD", 0x0D: "\r"}

// decodeNumericRef follows Python's html.unescape for "&#body;": the whole
// body must be decimal digits or x followed by hex digits, otherwise the
// semicolon would survive and ftfy keeps the reference.
func decodeNumericRef(body string) (string, bool) {
	base, digits := 10, body
	if body != "" && (body[0] == 'x' || body[0] == 'X') {
		base, digits = 16, body[1:]
	}
	if digits == "" {
		return "", false
	}
	var n int64
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		var d int64
		switch {
		case '0' <= c && c <= '9':
			d = int64(c - '0')
		case base == 16 && 'a' <= c && c <= 'f':
			d = int64(c-'a') + 10
		case base == 16 && 'A' <= c && c <= 'F':
			d = int64(c-'A') + 10
		default:
			return "", false
		}
		if n <= 0x10FFFF {
			n = n*int64(base) + d
		}
	}
	if s, ok := pyInvalidCharrefs[n]; ok {
		return s, true
	}
	if 0x80 <= n && n <= 0x9F {
		return string(cp1252C1[n-0x80]), true
	}
	if (0xD800 <= n && n <= 0xDFFF) || n > 0x10FFFF {
		return "\uFFFD", true
	}
	if (0x01 <= n && n <= 0x08) || n == 0x0B || (0x0E <= n && n <= 0x1F) || (0x7F <= n && n <= 0x9F) ||
		(0xFDD0 <= n && n <= 0xFDEF) || n&0xFFFE == 0xFFFE {
		return "", true
	}
	return string(rune(n)), true
}
