package s3

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// newStore opens a Store on srv's bucket under prefix with the smallest
// part size, so the contract's chunk sizes cross part boundaries, and a
// small copy limit, so commits of blobs over 6 MiB take the multipart
// copy path that S3 needs above 5 GiB.
func newStore(t *testing.T, srv *s3test.Server, bucket, prefix string) *Store {
	t.Helper()
	s, err := New(context.Background(), Config{
		Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region, Prefix: prefix,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: minPartSize,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.copyLimit, s.copyPart = 6<<20, minPartSize
	return s
}

func TestContract(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		prefix := fmt.Sprintf("registry-%d/", n.Add(1))
		return func() blobstore.Store { return newStore(t, srv, bucket, prefix) }
	})
}
