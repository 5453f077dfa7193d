package registry

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports pins the package's place in the house: registry may use the
// store, never Caddy (caddymodule wires it in) nor authscope's internals.
func TestImports(t *testing.T) {
	pkg, err := build.Default.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/caddyserver/") || strings.HasPrefix(imp, "github.com/caddy-oci/caddy-oci/caddymodule") {
			t.Errorf("registry imports %s", imp)
		}
	}
}
