package main

import (
	"strings"
)

// Query filters manifest records; zero fields match everything.
type Query struct {
	Prompt  string // substring of the prompt, case-insensitive
	Subject string // substring of the subject, case-insensitive
	Style   string // the style, case-insensitive
	Seed    int64  // the item's seed; -1 = any
}

// Match reports whether r passes the query.
func (q Query) Match(r Record) bool {
	contains := func(s, sub string) bool { return strings.Contains(strings.ToLower(s), strings.ToLower(sub)) }
	return contains(r.Prompt, q.Prompt) && contains(r.Subject, q.Subject) &&
		(q.Style == "" || strings.EqualFold(r.Style, q.Style)) &&
		(q.Seed < 0 || r.Seed == q.Seed)
}

// Search returns the records of the manifests in dir that match q, by
// grid index.
func Search(dir string, q Query) ([]Record, error) {
	m, err := readDir(dir)
	if err != nil {
		return nil, err
	}
	var out []Record
	for _, r := range sorted(m) {
		if q.Match(r) {
			out = append(out, r)
		}
	}
	return out, nil
}
