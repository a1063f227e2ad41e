// Command unicode14 prints the code points that Go's unicode tables assign
// (any general category) but Python 3.11's unicodedata (Unicode 14.0) leaves
// unassigned (category Cn), as Go range literals for tokenizer/unicode14.go.
//
// Run from this directory with Python 3.11 on PATH:
//
//	go run . > /tmp/new.txt
package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"unicode"
)

const script = `
import sys, unicodedata
assert unicodedata.unidata_version == "14.0.0", unicodedata.unidata_version
for line in sys.stdin:
    cp = int(line)
    if unicodedata.category(chr(cp)) == "Cn":
        print(cp)
`

func assigned(r rune) bool {
	for _, t := range []*unicode.RangeTable{unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.Cc, unicode.Cf, unicode.Co, unicode.Cs} {
		if unicode.Is(t, r) {
			return true
		}
	}
	return false
}

func main() {
	var in strings.Builder
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if assigned(r) {
			fmt.Fprintln(&in, r)
		}
	}
	cmd := exec.Command("python3", "-c", script)
	cmd.Stdin = strings.NewReader(in.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var lo, hi rune = -1, -1
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	fmt.Fprintf(w, "// Unicode %s code points unassigned in Unicode 14.0.0.\n", unicode.Version)
	flush := func() {
		if lo >= 0 {
			fmt.Fprintf(w, "\t{0x%04X, 0x%04X, 1},\n", lo, hi)
		}
	}
	for _, f := range strings.Fields(string(out)) {
		var r rune
		fmt.Sscan(f, &r)
		if r == hi+1 && lo >= 0 {
			hi = r
			continue
		}
		flush()
		lo, hi = r, r
	}
	flush()
}
