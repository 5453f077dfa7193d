//go:build linux

package fs

import (
	"os"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestContractFull: the storage-full case of the contract on a folder
// whose filesystem (a 16 MiB tmpfs) is filled to the brim, with no
// reserve, so the refusal is the filesystem's own ENOSPC.
func TestContractFull(t *testing.T) {
	storetest.RunFull(t, func(t *testing.T) storetest.Full {
		dir := tmpfs.Mount(t, 16<<20)
		return storetest.Full{
			Backend: func() blobstore.Store { return newStore(t, dir) },
			Fill: func(t *testing.T, left int64) func() {
				filler := tmpfs.FillTo(t, dir, left)
				return func() { os.Remove(filler) }
			},
		}
	})
}
