package tokenizer

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Emphasis factors of AUTOMATIC1111's prompt syntax.
const (
	RoundFactor  = 1.1     // (text)
	SquareFactor = 1 / 1.1 // [text]
)

// maxMultiplies bounds the work of ParseWeighted: A1111's algorithm costs
// one multiplication per fragment inside each closed bracket, which is
// quadratic in pathological prompts.
const maxMultiplies = 1 << 24

// ErrTooComplex reports a prompt whose brackets would take more than 16M
// weight multiplications to resolve (thousands of nested brackets around
// thousands of fragments); no real prompt comes close.
var ErrTooComplex = errors.New("tokenizer: prompt brackets too deeply nested")

// ErrWeight reports a "(text:weight)" whose weight is not a number, such as
// "(a:1.2.3)". A1111 fails on these too (Python's float raises).
var ErrWeight = errors.New("tokenizer: invalid attention weight")

// Fragment is a run of prompt text with one attention weight, as
// AUTOMATIC1111's parse_prompt_attention returns it. Break marks a BREAK
// keyword (A1111's ["BREAK", -1]); its Text is "BREAK". It is a plain value.
type Fragment struct {
	Text   string
	Weight float64
	Break  bool
}

// ParseWeighted parses AUTOMATIC1111's attention syntax the way
// modules/prompt_parser.parse_prompt_attention does: (text) multiplies the
// weight by 1.1, [text] divides it by 1.1, (text:w) multiplies it by w,
// brackets nest and unclosed ones apply to the rest of the prompt, \( \)
// \[ \] \\ are literal characters (a lone backslash is dropped), unmatched
// closers are literal text, and the word BREAK (upper case, on word
// boundaries, outside brackets) separates chunks. Adjacent fragments with
// equal weights are merged; an empty prompt gives one empty fragment of
// weight 1. As in A1111, a BREAK inside brackets has its marker weight
// multiplied and so becomes the literal text "BREAK". Weights are float64
// products in A1111's order, so they match it bit for bit. Errors are
// ErrWeight and, for pathological nesting, ErrTooComplex. It is safe for
// concurrent use.
func ParseWeighted(prompt string) ([]Fragment, error) {
	type item struct {
		text   string
		weight float64
	}
	var res []item
	var round, square []int
	work := 0
	mul := func(start int, f float64) {
		work += len(res) - start
		for i := start; i < len(res); i++ {
			res[i].weight *= f
		}
	}
	s := prompt
	// closeBracket closes the innermost bracket of opened (the starts of
	// the open ones of a kind) at s[i], multiplying its text by f, and
	// returns the rest; an unmatched closer is literal text.
	closeBracket := func(opened []int, f float64, i int) []int {
		if n := len(opened); n > 0 {
			mul(opened[n-1], f)
			return opened[:n-1]
		}
		res = append(res, item{s[i : i+1], 1})
		return opened
	}
	for i := 0; i < len(s); {
		switch c := s[i]; c {
		case '\\':
			if i+1 < len(s) && strings.IndexByte(`()[]\`, s[i+1]) >= 0 {
				res = append(res, item{s[i+1 : i+2], 1})
				i += 2
			} else {
				res = append(res, item{"", 1})
				i++
			}
		case '(':
			round = append(round, len(res))
			i++
		case '[':
			square = append(square, len(res))
			i++
		case ':':
			w, n, ok := matchWeight(s[i:])
			switch {
			case ok && len(round) > 0:
				f, err := parsePyFloat(w)
				if err != nil {
					return nil, fmt.Errorf("%w: %q at byte %d", ErrWeight, s[i:i+n], i)
				}
				mul(round[len(round)-1], f)
				round = round[:len(round)-1]
				i += n
			case ok:
				res = appendBreakSplit(res, s[i:i+n], func(t string, w float64) item { return item{t, w} })
				i += n
			default:
				res = append(res, item{":", 1})
				i++
			}
		case ')':
			round = closeBracket(round, RoundFactor, i)
			i++
		case ']':
			square = closeBracket(square, SquareFactor, i)
			i++
		default:
			j := i
			for j < len(s) && strings.IndexByte(`\()[]:`, s[j]) < 0 {
				j++
			}
			res = appendBreakSplit(res, s[i:j], func(t string, w float64) item { return item{t, w} })
			i = j
		}
		if work > maxMultiplies {
			return nil, ErrTooComplex
		}
	}
	for _, p := range round {
		if mul(p, RoundFactor); work > maxMultiplies {
			return nil, ErrTooComplex
		}
	}
	for _, p := range square {
		if mul(p, SquareFactor); work > maxMultiplies {
			return nil, ErrTooComplex
		}
	}
	if len(res) == 0 {
		res = append(res, item{"", 1})
	}
	var b strings.Builder
	out := make([]Fragment, 0, len(res))
	for i := 0; i < len(res); {
		j := i + 1
		for j < len(res) && res[j].weight == res[i].weight {
			j++
		}
		text := res[i].text
		if j > i+1 {
			b.Reset()
			for _, r := range res[i:j] {
				b.WriteString(r.text)
			}
			text = b.String()
		}
		out = append(out, Fragment{Text: text, Weight: res[i].weight, Break: text == "BREAK" && res[i].weight == -1})
		i = j
	}
	return out, nil
}

// appendBreakSplit appends text split on BREAK as A1111 does with
// re.split(r"\s*\bBREAK\b\s*", text): parts of weight 1 separated by
// ("BREAK", -1) markers.
func appendBreakSplit[T any](res []T, text string, mk func(string, float64) T) []T {
	start := 0 // start of the current part
	for pos := 0; pos < len(text); {
		k := strings.Index(text[pos:], "BREAK")
		if k < 0 {
			break
		}
		k += pos
		end := k + len("BREAK")
		r0, _ := utf8.DecodeLastRuneInString(text[:k])
		r1, _ := utf8.DecodeRuneInString(text[end:])
		if (k > 0 && isWordRune(r0)) || (end < len(text) && isWordRune(r1)) {
			pos = k + 1
			continue
		}
		left := k
		for left > start {
			r, size := utf8.DecodeLastRuneInString(text[:left])
			if !isPySpace(r) {
				break
			}
			left -= size
		}
		for end < len(text) {
			r, size := utf8.DecodeRuneInString(text[end:])
			if !isPySpace(r) {
				break
			}
			end += size
		}
		res = append(res, mk(text[start:left], 1), mk("BREAK", -1))
		start, pos = end, end
	}
	return append(res, mk(text[start:], 1))
}

// isWordRune approximates Python's \w for str: letters, numbers, '_'.
func isWordRune(r rune) bool {
	return r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r)
}

// isPySpace approximates Python's \s for str (str.isspace).
func isPySpace(r rune) bool {
	return unicode.IsSpace(r) || (0x1c <= r && r <= 0x1f)
}

// matchWeight matches `:\s*([+-]?[.\d]+)\s*\)` at the start of s and returns
// the weight text and the match length.
func matchWeight(s string) (w string, n int, ok bool) {
	i := 1 // ':'
	skip := func() {
		for i < len(s) {
			r, size := utf8.DecodeRuneInString(s[i:])
			if !isPySpace(r) {
				return
			}
			i += size
		}
	}
	skip()
	ws := i
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		i++
	}
	ds := i
	for i < len(s) {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r != '.' && !unicode.Is(unicode.Nd, r) {
			break
		}
		i += size
	}
	if i == ds {
		return "", 0, false
	}
	we := i
	skip()
	if i >= len(s) || s[i] != ')' {
		return "", 0, false
	}
	return s[ws:we], i + 1, true
}

// parsePyFloat parses [+-]?[.\d]+ as Python's float does: Unicode decimal
// digits count, overflow gives ±Inf rather than an error.
func parsePyFloat(w string) (float64, error) {
	var b strings.Builder
	for _, r := range w {
		if r >= utf8.RuneSelf {
			r = '0' + digitValue(r)
		}
		b.WriteRune(r)
	}
	f, err := strconv.ParseFloat(b.String(), 64)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return f, nil
		}
		return 0, err
	}
	return f, nil
}

// digitValue returns the value of the decimal digit r (category Nd). Nd
// characters come in runs of ten starting at zero.
func digitValue(r rune) rune {
	for _, g := range unicode.Nd.R16 {
		if rune(g.Lo) <= r && r <= rune(g.Hi) {
			return (r - rune(g.Lo)) % 10
		}
	}
	for _, g := range unicode.Nd.R32 {
		if rune(g.Lo) <= r && r <= rune(g.Hi) {
			return (r - rune(g.Lo)) % 10
		}
	}
	return 0
}
