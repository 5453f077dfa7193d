package composite

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
)

// TestCheckBlobStoredOnS3: CheckBlobStored, which a manifest push asks
// for each blob it references, asks the bucket (a HEAD), behind any read
// cache: an object deleted or cut short behind the registry's back is a
// lost blob (cache.ErrBlobUnknown with blobstore.ErrNotFound or
// ErrSizeMismatch), even when the read cache holds a copy, and that
// copy is dropped, so a read asks the bucket too and agrees. A bucket
// that cannot answer is cache.ErrUnavailable, never a lost blob. Before,
// a store on S3 was not asked at all: nil for every damage, and the
// manifest was accepted over bytes nobody could pull.
func TestCheckBlobStoredOnS3(t *testing.T) {
	damages := []struct {
		name    string
		damage  func(gw *s3test.Server, bucket, key string, data []byte)
		wantErr error
	}{
		{"removed", func(gw *s3test.Server, bucket, key string, _ []byte) { gw.Delete(t, bucket, key) }, blobstore.ErrNotFound},
		{"cut short", func(gw *s3test.Server, bucket, key string, data []byte) { gw.Put(t, bucket, key, data[:len(data)-1]) }, blobstore.ErrSizeMismatch},
	}
	for _, cached := range []bool{false, true} {
		for _, dm := range damages {
			name := "s3/" + dm.name
			if cached {
				name = "s3 with read cache/" + dm.name
			}
			t.Run(name, func(t *testing.T) {
				gw := s3test.Start(t)
				bucket := gw.Bucket(t)
				var blobs blobstore.Store = newS3Blobs(t, gw, bucket)
				if cached {
					rc, err := readcache.New(blobs, readcache.Options{Dir: t.TempDir(), MaxBytes: 64 << 20})
					if err != nil {
						t.Fatal(err)
					}
					blobs = rc
				}
				meta, leases := badgerMeta(t)()
				s, err := New(Options{Blobs: blobs, Meta: meta, Leases: leases})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(s.Close)

				data, other := randomBytes(64<<10), randomBytes(32<<10)
				d, od := push(t, s, "team/app", data), push(t, s, "team/app", other)
				readBlob(t, s, d) // the read cache's copy, when there is one
				if err := s.CheckBlobStored(ctx(t), "team/app", d, int64(len(data))); err != nil {
					t.Fatalf("CheckBlobStored of a stored blob: %v", err)
				}

				dm.damage(gw, bucket, "registry/blobs/sha256/"+d.Hex[:2]+"/"+d.Hex, data)
				err = s.CheckBlobStored(ctx(t), "team/app", d, int64(len(data)))
				if !errors.Is(err, cache.ErrBlobUnknown) || !errors.Is(err, dm.wantErr) {
					t.Fatalf("CheckBlobStored of an object %s: %v, want cache.ErrBlobUnknown and %v", dm.name, err, dm.wantErr)
				}
				// A read finds the same: no copy answers for the bucket.
				if b, err := s.OpenBlob(ctx(t), d); err == nil {
					buf := new(bytes.Buffer)
					_, err = buf.ReadFrom(b)
					b.Close()
					if err == nil {
						t.Fatalf("read of the object %s after the check: %d bytes and no error", dm.name, buf.Len())
					}
				}

				// Pushed again, the blob is stored again.
				push(t, s, "team/app", data)
				if err := s.CheckBlobStored(ctx(t), "team/app", d, int64(len(data))); err != nil {
					t.Fatalf("CheckBlobStored after the push again: %v", err)
				}

				// The bucket down: not a lost blob, the storage unavailable.
				gw.Kill()
				err = s.CheckBlobStored(ctx(t), "team/app", od, int64(len(other)))
				if err == nil || errors.Is(err, cache.ErrBlobUnknown) || !errors.Is(err, cache.ErrUnavailable) {
					t.Fatalf("CheckBlobStored with the bucket down: %v, want cache.ErrUnavailable and not ErrBlobUnknown", err)
				}
			})
		}
	}
}
