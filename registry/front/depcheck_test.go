package front

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports pins the front's place in the house: plain net/http, no
// Caddy (caddymodule wires it in).
func TestImports(t *testing.T) {
	pkg, err := build.Default.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, imp := range pkg.Imports {
		if strings.HasPrefix(imp, "github.com/caddyserver/") || strings.HasPrefix(imp, "github.com/caddy-oci/caddy-oci/caddymodule") {
			t.Errorf("registry/front imports %s", imp)
		}
	}
}
