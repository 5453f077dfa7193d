package s3

import (
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// TestContractDamage: an object rewritten behind the registry's back (a
// broken tool, a bucket restore) shows its real length, a lazily opened
// one refuses it, and a push heals it.
func TestContractDamage(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var n atomic.Int64
	storetest.RunDamage(t, func(t *testing.T) storetest.Damage {
		prefix := fmt.Sprintf("damage-%d/", n.Add(1))
		return storetest.Damage{
			Backend: func() blobstore.Store { return newStore(t, srv, bucket, prefix) },
			Replace: func(t *testing.T, d blobstore.Digest, b []byte) {
				srv.Put(t, bucket, prefix+"blobs/"+string(d.Algorithm)+"/"+d.Hex[:2]+"/"+d.Hex, b)
			},
		}
	})
}
