// Package depcheck pins what a package may import, from its own tests:
// a seam must not import its backends (they import it) nor the code that
// builds on it.
package depcheck

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// OnlyImports fails t if a non-test Go file of the current folder (the
// package under test) imports anything but the standard library and the
// paths in allowed.
func OnlyImports(t *testing.T, allowed ...string) {
	t.Helper()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			first, _, _ := strings.Cut(path, "/")
			if strings.Contains(first, ".") && !slices.Contains(allowed, path) {
				t.Errorf("%s imports %s; allowed beyond the standard library: %q", name, path, allowed)
			}
		}
	}
}
