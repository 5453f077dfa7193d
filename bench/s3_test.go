package bench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/registry"
)

// s3BlobSize is the blob the S3 benchmarks pull: OCI_BENCH_S3_BLOB_SIZE,
// default 256MiB (versitygw on the same machine writes it to its own
// folder, so 1 GiB pushes take long on a small CI box).
func s3BlobSize(b *testing.B) int64 {
	return mustSize(b, setting("", "OCI_BENCH_S3_BLOB_SIZE", "256MiB"))
}

// s3Env is a registry on a versitygw bucket (through package composite,
// metadata in badger: the pull path asks the metadata twice per GET) with
// blobs behind wrap, and the bucket's own Store for the limit.
type s3Env struct {
	bucket *s3.Store
	store  *composite.Store
	c      *benchclient.Client
}

func newS3Env(b *testing.B, wrap func(*s3.Store) blobstore.Store) *s3Env {
	b.Helper()
	srv := s3test.Start(b)
	bucket := srv.Bucket(b)
	bs, err := s3.New(context.Background(), s3.Config{
		Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region,
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true,
	}, nil)
	if err != nil {
		b.Fatal(err)
	}
	meta, err := badgermeta.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = meta.Close() })
	st, err := composite.New(composite.Options{Blobs: wrap(bs), Meta: meta, Leases: coord.NewLocal()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	h, err := registry.NewHandler(registry.Config{Store: st})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewServer(h)
	b.Cleanup(hs.Close)
	return &s3Env{bucket: bs, store: st, c: benchclient.NewClient(hs.URL, 4)}
}

// blobDigest is the digest of the benchmark blob of seed and size.
func blobDigest(b *testing.B, seed uint64, size int64) string {
	h := sha256.New()
	if _, err := io.Copy(h, benchclient.NewBlob(seed, size)); err != nil {
		b.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// s3Get reads blob d whole with one GET of the SDK: the limit of a pull
// from the bucket.
func (e *s3Env) s3Get(d string, size int64) error {
	dg, err := blobstore.ParseDigest(d)
	if err != nil {
		return err
	}
	rc, err := e.bucket.OpenRange(context.Background(), dg, 0, -1)
	if err != nil {
		return err
	}
	defer rc.Close()
	n, err := io.Copy(io.Discard, rc)
	if err == nil && n != size {
		err = fmt.Errorf("S3 GET: %d bytes, want %d", n, size)
	}
	return err
}

const seedS3 = 0x53

// BenchmarkS3Pull: GET of a blob through the registry on S3 (which streams
// it from one GET of the bucket) against a plain GET of the same object
// with the same SDK, timed alternately in the same run.
func BenchmarkS3Pull(b *testing.B) {
	size := s3BlobSize(b)
	e := newS3Env(b, func(s *s3.Store) blobstore.Store { return s })
	d := blobDigest(b, seedS3, size)
	if err := e.c.PushMonolithic("bench/s3", d, size, benchclient.NewBlob(seedS3, size)); err != nil {
		b.Fatal(err)
	}
	url := e.c.Base() + "/v2/bench/s3/blobs/" + d
	for _, get := range []func() error{
		func() error { return e.c.Get(url, nil, size) },
		func() error { return e.s3Get(d, size) },
	} {
		if err := get(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(size)
	var limit time.Duration
	var limitCPU, pullCPU cpuSplit
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		start := time.Now()
		c := startCPU()
		if err := e.s3Get(d, size); err != nil {
			b.Fatal(err)
		}
		limit += time.Since(start)
		limitCPU.add(c)
		c = startCPU()
		b.StartTimer()
		if err := e.c.Get(url, nil, size); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		pullCPU.add(c)
		b.StartTimer()
	}
	b.StopTimer()
	reportLimit(b, size, limit)
	limitCPU.report(b, "limit-", size*int64(b.N))
	pullCPU.report(b, "", size*int64(b.N))
}

// BenchmarkS3WarmPullCache: GET of a blob through the registry on S3 with
// a read cache that holds it, against the same GET from the registry on
// the filesystem backend (cache.Store), timed alternately in the same
// run: the limit is the single-node default.
func BenchmarkS3WarmPullCache(b *testing.B) {
	size := s3BlobSize(b)
	var rc *readcache.Store
	e := newS3Env(b, func(s *s3.Store) blobstore.Store {
		var err error
		rc, err = readcache.New(s, readcache.Options{Dir: b.TempDir(), MaxBytes: 2 * size})
		if err != nil {
			b.Fatal(err)
		}
		return rc
	})
	d := blobDigest(b, seedS3, size)
	if err := e.c.PushMonolithic("bench/s3", d, size, benchclient.NewBlob(seedS3, size)); err != nil {
		b.Fatal(err)
	}
	fsEnv := newEnv(b)
	if err := fsEnv.c.PushMonolithic("bench/s3", d, size, benchclient.NewBlob(seedS3, size)); err != nil {
		b.Fatal(err)
	}
	url := e.c.Base() + "/v2/bench/s3/blobs/" + d
	fsURL := fsEnv.c.Base() + "/v2/bench/s3/blobs/" + d
	// The first GET fills the cache; the copy is kept as the handler
	// closes the blob, a moment after the last byte.
	if err := e.c.Get(url, nil, size); err != nil {
		b.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); rc.Size() != size; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("the cache holds %d bytes after a pull, want %d", rc.Size(), size)
		}
	}
	// Warm the page cache and connection pools of both.
	for _, get := range []func() error{
		func() error { return e.c.Get(url, nil, size) },
		func() error { return fsEnv.c.Get(fsURL, nil, size) },
	} {
		if err := get(); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(size)
	var limit time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		start := time.Now()
		if err := fsEnv.c.Get(fsURL, nil, size); err != nil {
			b.Fatal(err)
		}
		limit += time.Since(start)
		b.StartTimer()
		if err := e.c.Get(url, nil, size); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLimit(b, size, limit)
}
