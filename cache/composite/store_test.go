package composite

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/manifesttest"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// replicas returns a function that starts a replica: a Store with its own
// S3 client, its own PostgreSQL pool and leases, on one bucket prefix and
// one database shared by every replica of the test.
type replicas func() *Store

type backend struct {
	name string
	open func(t *testing.T) replicas
}

// s3Blobs is a blob store on a fresh versitygw bucket, and a function
// making further clients of it (one per replica).
func s3Blobs(t *testing.T) func() blobstore.Store {
	open, _ := s3Damageable(t)
	return open
}

// fsBlobs is a blob store on a fresh folder; every replica opens the same
// folder (as replicas sharing a network folder would).
func fsBlobs(t *testing.T) func() blobstore.Store {
	open, _ := fsDamageable(t)
	return open
}

// pgMeta is one fresh database; each replica gets its own pool and leases.
func pgMeta(t *testing.T) func() (metastore.Store, coord.Leases) {
	dsn := pgtest.NewDatabase(t)
	return func() (metastore.Store, coord.Leases) {
		meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(meta.Close)
		return meta, meta.Leases()
	}
}

// badgerMeta is one embedded database and in-process leases, which every
// "replica" of a single node shares.
func badgerMeta(t *testing.T) func() (metastore.Store, coord.Leases) {
	meta, err := badgermeta.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = meta.Close() })
	leases := coord.NewLocal()
	return func() (metastore.Store, coord.Leases) { return meta, leases }
}

// combine makes replicas of one blob and one metadata backend.
func combine(blobs func(*testing.T) func() blobstore.Store, meta func(*testing.T) func() (metastore.Store, coord.Leases)) func(t *testing.T) replicas {
	return func(t *testing.T) replicas {
		nb, nm := blobs(t), meta(t)
		return func() *Store {
			m, l := nm()
			s, err := New(Options{Blobs: nb(), Meta: m, Leases: l})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}
	}
}

// backends is every combination the store runs on: the contract below is
// one table of tests for all of them.
func backends(*testing.T) []backend {
	return []backend{
		{"s3+postgres", combine(s3Blobs, pgMeta)},
		{"fs+postgres", combine(fsBlobs, pgMeta)},
		{"s3+badger", combine(s3Blobs, badgerMeta)},
		{"fs+badger", combine(fsBlobs, badgerMeta)},
	}
}

// each runs fn against every backend.
func each(t *testing.T, fn func(t *testing.T, replica replicas)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { fn(t, b.open(t)) })
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func readBlob(t *testing.T, s *Store, d cache.Digest) []byte {
	t.Helper()
	b, err := s.OpenBlob(ctx(t), d)
	if err != nil {
		t.Fatalf("OpenBlob %s: %v", d, err)
	}
	defer b.Close()
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestBlobs(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		data := randomBytes(1 << 20)
		d := cache.FromBytes(cache.SHA256, data)
		if _, err := a.StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("StatBlob before the push: %v", err)
		}
		if _, err := a.PutBlob(ctx(t), d, int64(len(data)-1), bytes.NewReader(data)); !errors.Is(err, cache.ErrSizeMismatch) {
			t.Errorf("PutBlob with a wrong size: %v", err)
		}
		if _, err := a.PutBlob(ctx(t), cache.FromBytes(cache.SHA256, []byte("x")), -1, bytes.NewReader(data)); !errors.Is(err, cache.ErrDigestMismatch) {
			t.Errorf("PutBlob with a wrong digest: %v", err)
		}
		if _, err := b.StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("StatBlob after refused pushes: %v", err)
		}
		if n, err := a.PutBlob(ctx(t), d, int64(len(data)), bytes.NewReader(data)); err != nil || n != int64(len(data)) {
			t.Fatalf("PutBlob: %d, %v", n, err)
		}
		if info, err := b.StatBlob(ctx(t), d); err != nil || info.Size != int64(len(data)) {
			t.Fatalf("StatBlob on the other replica: %+v, %v", info, err)
		}
		if !bytes.Equal(readBlob(t, b, d), data) {
			t.Fatal("the other replica reads other bytes")
		}
		if _, err := b.HasBlob(ctx(t), "team/app", d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Errorf("HasBlob before the link: %v", err)
		}
		if err := a.LinkBlob(ctx(t), "team/app", d); err != nil {
			t.Fatal(err)
		}
		if info, err := b.HasBlob(ctx(t), "team/app", d); err != nil || info.Size != int64(len(data)) {
			t.Errorf("HasBlob after the link: %+v, %v", info, err)
		}
		if repos, err := b.ReposWithBlob(ctx(t), d, 10); err != nil || len(repos) != 1 || repos[0] != "team/app" {
			t.Errorf("ReposWithBlob: %v, %v", repos, err)
		}
	})
}

// A chunked upload whose requests alternate between replicas completes,
// and the blob each replica then reads is the one pushed.
func TestUploadAcrossReplicas(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		rs := []*Store{replica(), replica(), replica()}
		data := randomBytes(13<<20 + 12345) // crosses S3's 5 MiB part size
		d := cache.FromBytes(cache.SHA256, data)
		u, err := rs[0].OpenUpload(ctx(t), "team/app", "alice")
		if err != nil {
			t.Fatal(err)
		}
		chunks := [][]byte{data[:3<<20], data[3<<20 : 9<<20], data[9<<20 : 9<<20+1], data[9<<20+1:]}
		for i, c := range chunks {
			r := rs[(i+1)%len(rs)]
			// A chunk at the wrong offset is refused and changes nothing.
			if _, err := r.AppendUpload(ctx(t), "team/app", u.ID, u.Size+1, bytes.NewReader(c)); !errors.Is(err, cache.ErrOffsetMismatch) {
				t.Fatalf("chunk %d at a wrong offset: %v", i, err)
			}
			if _, err := r.AppendUpload(ctx(t), "other/repo", u.ID, u.Size, bytes.NewReader(c)); !errors.Is(err, cache.ErrUploadUnknown) {
				t.Fatalf("chunk %d to the session under another repository: %v", i, err)
			}
			u, err = r.AppendUpload(ctx(t), "team/app", u.ID, u.Size, bytes.NewReader(c))
			if err != nil {
				t.Fatalf("chunk %d on replica %d: %v", i, (i+1)%len(rs), err)
			}
		}
		if g, err := rs[2].GetUpload(ctx(t), "team/app", u.ID); err != nil || g.Size != int64(len(data)) || g.Owner != "alice" {
			t.Fatalf("GetUpload: %+v, %v", g, err)
		}
		if _, err := rs[1].CommitUpload(ctx(t), "team/app", u.ID, cache.FromBytes(cache.SHA256, []byte("no"))); !errors.Is(err, cache.ErrDigestMismatch) {
			t.Fatalf("commit with a wrong digest: %v", err)
		}
		if _, err := rs[0].StatBlob(ctx(t), d); !errors.Is(err, cache.ErrBlobUnknown) {
			t.Fatalf("blob visible after a refused commit: %v", err)
		}
		info, err := rs[2].CommitUpload(ctx(t), "team/app", u.ID, d)
		if err != nil || info.Size != int64(len(data)) {
			t.Fatalf("commit: %+v, %v", info, err)
		}
		for i, r := range rs {
			if !bytes.Equal(readBlob(t, r, d), data) {
				t.Fatalf("replica %d reads other bytes", i)
			}
			if _, err := r.HasBlob(ctx(t), "team/app", d); err != nil {
				t.Fatalf("replica %d: committed blob not linked: %v", i, err)
			}
			if _, err := r.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
				t.Fatalf("replica %d: session still there after commit: %v", i, err)
			}
		}
	})
}

// Two replicas writing one session at once: one chunk lands, the other is
// refused as a chunk at a taken offset, and the session holds exactly the
// chunk that landed.
func TestConcurrentChunks(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		one, two := randomBytes(6<<20), randomBytes(6<<20)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, c := range []struct {
			s    *Store
			data []byte
		}{{a, one}, {b, two}} {
			wg.Go(func() { _, errs[i] = c.s.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader(c.data)) })
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won == -1:
				won = i
			case err == nil:
				t.Fatal("both chunks landed at offset 0")
			case !errors.Is(err, cache.ErrOffsetMismatch):
				t.Fatalf("the losing chunk: %v, want ErrOffsetMismatch", err)
			}
		}
		if won < 0 {
			t.Fatalf("no chunk landed: %v", errs)
		}
		data := [][]byte{one, two}[won]
		d := cache.FromBytes(cache.SHA256, data)
		if _, err := b.CommitUpload(ctx(t), "team/app", u.ID, d); err != nil {
			t.Fatalf("commit of the chunk that landed: %v", err)
		}
		if !bytes.Equal(readBlob(t, a, d), data) {
			t.Fatal("the blob is not the chunk that landed")
		}
	})
}

func TestCancelUpload(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader(randomBytes(1000))); err != nil {
			t.Fatal(err)
		}
		if err := b.CancelUpload(ctx(t), "other", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Errorf("cancel under another repository: %v", err)
		}
		if err := b.CancelUpload(ctx(t), "team/app", u.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := a.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Errorf("session after cancel: %v", err)
		}
		if _, err := a.AppendUpload(ctx(t), "team/app", u.ID, 1000, bytes.NewReader([]byte("x"))); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Errorf("append after cancel: %v", err)
		}
	})
}

// TestCreateManifestContract: replicas of the scaled-out store keep the
// contract of a create-only push, each backend's check and write one
// step for all of them.
func TestCreateManifestContract(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			manifesttest.Run(t, func(t *testing.T) manifesttest.Replicas {
				r := b.open(t)
				return func() manifesttest.Store { return r() }
			})
		})
	}
}
