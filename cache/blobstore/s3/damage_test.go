package s3

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// TestContractDamage: an object rewritten behind the registry's back (a
// broken tool, a bucket restore), a plain one or a link's data, shows its
// real length, a lazily opened one refuses it, and a push heals it.
func TestContractDamage(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var n atomic.Int64
	storetest.RunDamage(t, func(t *testing.T) storetest.Damage {
		prefix := fmt.Sprintf("damage-%d/", n.Add(1))
		return storetest.Damage{
			Backend: func() blobstore.Store { return newStore(t, srv, bucket, prefix) },
			Replace: func(t *testing.T, d blobstore.Digest, b []byte) {
				key := prefix + "blobs/" + string(d.Algorithm) + "/" + d.Hex[:2] + "/" + d.Hex
				if data, ok := linkedData(t, srv, bucket, prefix, d); ok {
					key = data
				}
				srv.Put(t, bucket, key, b)
			},
		}
	})
}

// linkedData is the key of the data blob d's link names, if d is linked.
func linkedData(t *testing.T, srv *s3test.Server, bucket, prefix string, d blobstore.Digest) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := prefix + "links/" + string(d.Algorithm) + "/" + d.Hex[:2] + "/" + d.Hex
	out, err := srv.Client().GetObject(ctx, &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return "", false // a plain object
	}
	defer out.Body.Close()
	var l struct{ Data string }
	if err := json.NewDecoder(out.Body).Decode(&l); err != nil || len(l.Data) < 2 {
		t.Fatalf("link %s: %v", key, err)
	}
	return prefix + "data/" + l.Data[:2] + "/" + l.Data, true
}
