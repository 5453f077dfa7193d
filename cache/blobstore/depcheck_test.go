package blobstore

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/depcheck"
)

// TestImportsOnlyTheStandardLibrary pins what the seam may import: no
// backend (they import it), and not package cache, which builds on it.
func TestImportsOnlyTheStandardLibrary(t *testing.T) { depcheck.OnlyImports(t) }
