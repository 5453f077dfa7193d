package fs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// TestContractDamage: a blob file rewritten behind the store's back (an
// operator, fsck, a broken tool) shows its real length, and a push heals it.
func TestContractDamage(t *testing.T) {
	storetest.RunDamage(t, func(t *testing.T) storetest.Damage {
		dir := t.TempDir()
		return storetest.Damage{
			Backend: func() blobstore.Store { return newStore(t, dir) },
			Replace: func(t *testing.T, d blobstore.Digest, b []byte) { damageFile(t, dir, d, b) },
		}
	})
}

// damageFile writes b over the file of blob d in the folder dir.
func damageFile(t testing.TB, dir string, d blobstore.Digest, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex), b, 0o644); err != nil {
		t.Fatal(err)
	}
}
