package testenv

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// EnvInt returns $name as a whole number, or def when it is unset; it
// fails the test when the value is not a whole number of at least least
// (a measurement's size, count or thread number).
func EnvInt(t testing.TB, name string, def, least int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil || n < least {
		t.Fatalf("%s=%q: want a whole number ≥ %d", name, v, least)
	}
	return n
}

// EnvInts returns $name as a comma-separated list of whole numbers, or
// def when it is unset; it fails the test when one is not a whole number of
// at least least.
func EnvInts(t testing.TB, name string, def []int, least int) []int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	var r []int
	for f := range strings.SplitSeq(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < least {
			t.Fatalf("%s=%q: want whole numbers ≥ %d", name, v, least)
		}
		r = append(r, n)
	}
	return r
}
