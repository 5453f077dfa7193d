package metastore

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportsOnlyTheSeams pins what the seam may import: the standard
// library and the blob seam (for its Digest), never a backend (they
// import it) nor package cache, which will build on it.
func TestImportsOnlyTheSeams(t *testing.T) {
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
			if strings.Contains(first, ".") && path != "github.com/caddy-oci/caddy-oci/cache/blobstore" {
				t.Errorf("%s imports %s; the metadata seam imports the standard library and blobstore only", name, path)
			}
		}
	}
}
