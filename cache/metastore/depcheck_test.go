package metastore

import (
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/depcheck"
)

// TestImportsOnlyTheSeams pins what the seam may import: the standard
// library and the blob seam (for its Digest), never a backend (they
// import it) nor package cache, which will build on it.
func TestImportsOnlyTheSeams(t *testing.T) {
	depcheck.OnlyImports(t, "github.com/caddy-oci/caddy-oci/cache/blobstore")
}
