package authscope

// Repository patterns are zot's globs (doublestar): besides path.Match's
// `*`, `?`, `[...]` and `\` escapes, `{a,b}` stands for either
// alternative and `[!...]` for a character outside the class. A zot
// pattern read with path.Match alone would match nothing (`{prod,release}/**`)
// or the opposite characters (`[!p]*`), and the repositories it was
// written for would fall to a shorter pattern that may grant more.

import (
	"errors"
	"fmt"
	"strings"
)

// maxPatternAlternatives bounds what one pattern spells out to:
// `{a,b}{c,d}...` doubles with every group.
const maxPatternAlternatives = 256

// maxPatternLength bounds a pattern's text: spelling out its {} groups
// takes time quadratic in it, on every MatchPattern call. A name has at
// most MaxNameLength bytes; this leaves room for 256 alternatives of a
// short name each.
const maxPatternLength = 4096

var errPatternBraces = errors.New("unbalanced { }")

// ExpandPattern returns the patterns without alternatives that pat
// stands for (`{prod,release}/**`: `prod/**` and `release/**`), in
// path.Match's syntax, or why pat is no pattern.
func ExpandPattern(pat string) ([]string, error) { return expandPattern(pat) }

// expandPattern returns the patterns without alternatives that pat
// stands for, each in path.Match's syntax ([!...] written [^...]).
func expandPattern(pat string) ([]string, error) {
	if len(pat) > maxPatternLength {
		return nil, fmt.Errorf("longer than %d bytes", maxPatternLength)
	}
	if !strings.ContainsAny(pat, "{}[") {
		return []string{pat}, nil
	}
	var out []string
	var expand func(p string) error
	expand = func(p string) error {
		open, end, parts, err := firstAlternatives(p)
		if err != nil {
			return err
		}
		if open < 0 {
			if len(out) == maxPatternAlternatives {
				return fmt.Errorf("more than %d alternatives", maxPatternAlternatives)
			}
			out = append(out, negatedClasses(p))
			return nil
		}
		for _, alt := range parts {
			if err := expand(p[:open] + alt + p[end+1:]); err != nil {
				return err
			}
		}
		return nil
	}
	if err := expand(pat); err != nil {
		return nil, err
	}
	return out, nil
}

// firstAlternatives finds the first `{...}` of p outside classes and
// escapes: the offsets of its braces and its alternatives (split at its
// own commas, nested groups left whole). open is -1 when there is none.
func firstAlternatives(p string) (open, end int, parts []string, err error) {
	open, depth, start := -1, 0, 0
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c == '\\':
			i++ // the escaped character is itself
		case c == '[':
			i = classEnd(p, i)
		case c == '{':
			if depth == 0 {
				open, start = i, i+1
			}
			depth++
		case c == '}':
			if depth == 0 {
				return 0, 0, nil, errPatternBraces
			}
			depth--
			if depth == 0 {
				return open, i, append(parts, p[start:i]), nil
			}
		case c == ',' && depth == 1:
			parts = append(parts, p[start:i])
			start = i + 1
		}
	}
	if depth > 0 {
		return 0, 0, nil, errPatternBraces
	}
	return -1, 0, nil, nil
}

// classEnd returns the offset of the `]` closing the class that opens at
// p[i] (a `]` right after `[`, `[!` or `[^` is a member), or the end of p.
func classEnd(p string, i int) int {
	j := i + 1
	if j < len(p) && (p[j] == '!' || p[j] == '^') {
		j++
	}
	if j < len(p) && p[j] == ']' {
		j++
	}
	for ; j < len(p); j++ {
		switch p[j] {
		case '\\':
			j++
		case ']':
			return j
		}
	}
	return len(p)
}

// negatedClasses writes doublestar's `[!...]` as path.Match's `[^...]`.
func negatedClasses(p string) string {
	if !strings.Contains(p, "[!") {
		return p
	}
	b := []byte(p)
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '[':
			if i+1 < len(b) && b[i+1] == '!' {
				b[i+1] = '^'
			}
			i = classEnd(p, i)
		}
	}
	return string(b)
}
