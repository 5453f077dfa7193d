package bench

// The scaled-out store (issue 11): blobs in S3 (versitygw here), metadata
// in PostgreSQL, through the same handler and client as the filesystem
// benchmarks. The blob limits are the same SDK doing a plain PutObject and
// GetObject of the same bytes against the same server; the metadata
// figures are PostgreSQL beside badger in one run.
//
//	OCI_BENCH_BLOB_SIZE=256MiB go test -run '^$' -bench 'S3' -benchtime 2x ./bench/
//	go test -run '^$' -bench 'Meta' -benchtime 3000x ./bench/
//
// Both need versitygw and PostgreSQL (see cache/blobstore/s3/s3test and
// pgmeta/pgtest); without them they skip.

import (
	"context"
	"io"
	"net/http/httptest"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/bench/benchclient"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
	"github.com/caddy-oci/caddy-oci/registry"
)

const (
	seedS3Push = 6 << 32
	seedS3Get  = 7 << 32
)

// scaleEnv is the registry on S3 + PostgreSQL, and a plain client of the
// same S3 server for the limits.
type scaleEnv struct {
	dir    string
	c      *benchclient.Client
	s3     *awss3.Client
	bucket string
}

func newScaleEnv(b *testing.B, conns int) *scaleEnv {
	b.Helper()
	st, srv, bucket, dir := newScaleStore(b)
	h := httptest.NewServer(registry.New(registry.Config{Store: st}))
	b.Cleanup(h.Close)
	client := awss3.New(awss3.Options{
		Region: srv.Region, BaseEndpoint: aws.String(srv.Endpoint), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
		// As the store's own client (cache/blobstore/s3): no checksums
		// beyond what S3 requires, so both sides do the same work.
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
	return &scaleEnv{dir: dir, c: benchclient.NewClient(h.URL, conns), s3: client, bucket: bucket}
}

// newScaleStore is the composite store on a versitygw bucket and
// PostgreSQL; the S3 server, the bucket's name and the store's spool
// folder.
func newScaleStore(b *testing.B) (*composite.Store, *s3test.Server, string, string) {
	b.Helper()
	srv := s3test.Start(b)
	bucket := srv.Bucket(b)
	pg := pgtest.Start(b)
	ctx := context.Background()
	blobs, err := s3.New(ctx, s3.Config{Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region,
		Prefix: "registry/", AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true}, benchLogger(b))
	if err != nil {
		b.Fatal(err)
	}
	meta, err := pgmeta.Open(ctx, pgmeta.Options{DSN: pg.NewDatabase(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(meta.Close)
	dir := b.TempDir()
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases(), SpoolDir: dir})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st, srv, bucket, dir
}

// putObject is the push limit: one PutObject of the blob's file (the SDK
// reads it twice, to sign and to send, as the store does each part).
func (e *scaleEnv) putObject(b *testing.B, path, key string) time.Duration {
	b.Helper()
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	start := time.Now()
	if _, err := e.s3.PutObject(context.Background(), &awss3.PutObjectInput{Bucket: &e.bucket, Key: &key, Body: f}); err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

// getObject is the GET limit: GetObject of key into io.Discard.
func (e *scaleEnv) getObject(b *testing.B, key string, size int64) time.Duration {
	b.Helper()
	start := time.Now()
	out, err := e.s3.GetObject(context.Background(), &awss3.GetObjectInput{Bucket: &e.bucket, Key: &key})
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, out.Body)
	out.Body.Close()
	if err != nil || n != size {
		b.Fatalf("GetObject: %d bytes of %d: %v", n, size, err)
	}
	return time.Since(start)
}

// BenchmarkS3Push: a monolithic push of a fresh blob to the registry on
// S3 + PostgreSQL, against a plain PutObject of the same bytes, run just
// before each push with the timer stopped. x-limit = push MB/s / PutObject
// MB/s (target >= 0.85).
func BenchmarkS3Push(b *testing.B) {
	size := blobSize(b)
	e := newScaleEnv(b, 4)
	b.SetBytes(size)
	var limit time.Duration
	mem := startMemPeak()
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		s := seedS3Push + uint64(i)
		path, digest, _, err := benchclient.LimitWrite(e.dir, s, size)
		if err != nil {
			b.Fatal(err)
		}
		limit += e.putObject(b, path, "limit/"+strconv.Itoa(i))
		os.Remove(path)
		b.StartTimer()
		if err := e.c.PushMonolithic("bench/s3push", digest, size, benchclient.NewBlob(s, size)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLimit(b, size, limit)
	mem.report(b)
}

// BenchmarkS3PushSession: the push real clients make (docker, crane):
// POST, the whole blob in one PATCH, PUT ?digest=, against the same
// PutObject limit. The digest is known only at the PUT, so the commit
// completes the upload into its own data object and links the digest to
// it (no copy of the bytes).
func BenchmarkS3PushSession(b *testing.B) {
	size := blobSize(b)
	e := newScaleEnv(b, 4)
	b.SetBytes(size)
	var limit time.Duration
	b.ResetTimer()
	for i := range b.N {
		b.StopTimer()
		s := seedS3Push + 1<<16 + uint64(i)
		path, digest, _, err := benchclient.LimitWrite(e.dir, s, size)
		if err != nil {
			b.Fatal(err)
		}
		limit += e.putObject(b, path, "limit/"+strconv.Itoa(i))
		os.Remove(path)
		b.StartTimer()
		if err := e.c.PushChunked("bench/s3push", digest, size, size, benchclient.NewBlob(s, size)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLimit(b, size, limit)
}

// benchLogger logs the S3 store's timings of each step of a push
// (OCI_BENCH_LOG=1), else nothing.
func benchLogger(b *testing.B) *zap.Logger {
	if os.Getenv("OCI_BENCH_LOG") != "1" {
		return nil
	}
	l, err := zap.NewDevelopment()
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkS3Get: GET of a committed blob through the registry on S3 +
// PostgreSQL, against GetObject of the same bytes, alternating. x-limit
// (target >= 0.9).
func BenchmarkS3Get(b *testing.B) {
	size := blobSize(b)
	e := newScaleEnv(b, 4)
	path, digest, _, err := benchclient.LimitWrite(e.dir, seedS3Get, size)
	if err != nil {
		b.Fatal(err)
	}
	e.putObject(b, path, "limit/get")
	os.Remove(path)
	if err := e.c.PushMonolithic("bench/s3get", digest, size, benchclient.NewBlob(seedS3Get, size)); err != nil {
		b.Fatal(err)
	}
	u := e.c.Base() + "/v2/bench/s3get/blobs/" + digest
	b.SetBytes(size)
	var limit time.Duration
	mem := startMemPeak()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		limit += e.getObject(b, "limit/get", size)
		b.StartTimer()
		if err := e.c.Get(u, nil, size); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportLimit(b, size, limit)
	mem.report(b)
}

// metaEnv is a registry whose metadata is in backend: "badger" (the
// default store, filesystem + badger) or "postgres" (S3 + PostgreSQL).
func metaEnv(b *testing.B, backend string, conns int) *benchclient.Client {
	if backend == "postgres" {
		return newScaleEnv(b, conns).c
	}
	e := newEnv(b)
	return benchclient.NewClient(e.srv.URL, conns)
}

// BenchmarkMetaManifestPut: parallel manifest PUTs under distinct tags,
// the same requests on badger and on PostgreSQL; compare req/s.
func BenchmarkMetaManifestPut(b *testing.B) {
	for _, backend := range []string{"badger", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			p := parallelism(b)
			c := metaEnv(b, backend, p*runtime.GOMAXPROCS(0))
			im := pushImage(b, c, "bench/manifest")
			var next atomic.Int64
			b.SetParallelism(p)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					n := int(next.Add(1))
					if err := c.PutManifest("bench/manifest", "t"+strconv.Itoa(n), ociManifest, im.manifest(n)); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}

// BenchmarkMetaTagGet: parallel GETs of one manifest by tag, on badger
// and on PostgreSQL; compare req/s.
func BenchmarkMetaTagGet(b *testing.B) {
	for _, backend := range []string{"badger", "postgres"} {
		b.Run(backend, func(b *testing.B) {
			p := parallelism(b)
			c := metaEnv(b, backend, p*runtime.GOMAXPROCS(0))
			im := pushImage(b, c, "bench/manifest")
			m := im.manifest(0)
			if err := c.PutManifest("bench/manifest", "latest", ociManifest, m); err != nil {
				b.Fatal(err)
			}
			u := c.Base() + "/v2/bench/manifest/manifests/latest"
			accept := map[string]string{"Accept": acceptAll}
			b.SetParallelism(p)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := c.Get(u, accept, int64(len(m))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
		})
	}
}
