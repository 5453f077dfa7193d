package authscope

import (
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
