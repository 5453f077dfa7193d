package authscope

import (
	"fmt"
	"math/rand/v2"
	"path"
	"strings"
	"testing"
	"time"
)

// TestMatchPatternManyDoubleStars: a pattern of several ** components
// against a long name that it does not match is answered in time linear
// in their product, not by trying every way to split the name among the
// **s (C(n+k, k) ways: hours for a 127-component name and ten **s). The
// name is the client's, so a pattern an operator wrote must not let a
// client stall a request, and with {a,b} a pattern spells out to many.
func TestMatchPatternManyDoubleStars(t *testing.T) {
	pat := strings.Repeat("**/", 10) + "z"
	name := strings.TrimSuffix(strings.Repeat("a/", 127), "/")
	if len(name) > MaxNameLength {
		t.Fatalf("name of %d bytes", len(name))
	}
	start := time.Now()
	if MatchPattern(pat, name) {
		t.Fatal("matched")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %v", d)
	}
}

// TestMatchPatternKeepsPathMatchMeaning: a pattern without braces or
// [!...] classes (every pattern a config could hold before zot's globs
// were read) matches exactly the names it matched before: those that
// path.Match matches component by component, ** standing for any number
// of components. Random patterns and names over a small alphabet, so
// that most pairs share components.
func TestMatchPatternKeepsPathMatchMeaning(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	comps := []string{"a", "b", "ab", "*", "a*", "?", "[ab]", "[^a]", `\a`, "**"}
	names := []string{"a", "b", "ab", "ba", "c"}
	pick := func(set []string, n int) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = set[rng.IntN(len(set))]
		}
		return strings.Join(parts, "/")
	}
	for range 20000 {
		pat, name := pick(comps, 1+rng.IntN(5)), pick(names, 1+rng.IntN(6))
		want := recursiveMatch(strings.Split(pat, "/"), strings.Split(name, "/"))
		if got := MatchPattern(pat, name); got != want {
			t.Fatalf("MatchPattern(%q, %q) = %v, path.Match per component says %v", pat, name, got, want)
		}
	}
}

// recursiveMatch is the plain definition: ** takes any number of
// components, any other component is one path.Match.
func recursiveMatch(pat, name []string) bool {
	if len(pat) == 0 {
		return len(name) == 0
	}
	if pat[0] == "**" {
		for i := 0; i <= len(name); i++ {
			if recursiveMatch(pat[1:], name[i:]) {
				return true
			}
		}
		return false
	}
	if len(name) == 0 {
		return false
	}
	ok, _ := path.Match(pat[0], name[0])
	return ok && recursiveMatch(pat[1:], name[1:])
}

// TestPatternLengthBounded: spelling out a pattern's {} groups takes
// time quadratic in its length (each group is one more pass over the
// rest), and MatchPattern (a mirror's repositories, a signature policy's
// match, a sync content) spells it out on every call: a pattern longer
// than any name's pattern needs is refused at load (and matches
// nothing), instead of costing a tenth of a second per request at 12 kB
// and seconds at 100 kB.
func TestPatternLengthBounded(t *testing.T) {
	long := strings.Repeat("{a}", 4000) // 12000 bytes
	if err := CheckPattern(long); err == nil {
		t.Error("a pattern of 4000 {} groups was accepted")
	}
	if MatchPattern(long, "a") {
		t.Error("a refused pattern matched")
	}
	var alts []string
	for i := range 256 {
		alts = append(alts, fmt.Sprintf("team-%03d", i))
	}
	wide := "{" + strings.Join(alts, ",") + "}/**" // 256 alternatives, as allowed
	if err := CheckPattern(wide); err != nil {
		t.Errorf("256 alternatives of a name each: %v", err)
	}
}
