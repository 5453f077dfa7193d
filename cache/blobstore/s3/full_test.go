//go:build linux

package s3

import (
	"os"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestContractFull: the storage-full case of the contract on a bucket
// whose server (versitygw) keeps its files on a 32 MiB tmpfs filled to
// the brim: its ENOSPC comes back as a 507, ErrStorageFull here.
func TestContractFull(t *testing.T) {
	storetest.RunFull(t, func(t *testing.T) storetest.Full {
		dir := tmpfs.Mount(t, 32<<20)
		srv := s3test.StartIn(t, dir)
		bucket := srv.Bucket(t)
		return storetest.Full{
			Backend: func() blobstore.Store { return newStore(t, srv, bucket, "reg/") },
			Fill: func(t *testing.T, left int64) func() {
				filler := tmpfs.FillTo(t, dir, left)
				return func() { os.Remove(filler) }
			},
		}
	})
}
