package composite

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/readcache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// damageable is a blob backend whose stored bytes a test can replace
// behind the stores' back, as bit rot or a broken restore would.
type damageable func(t *testing.T) (open func() blobstore.Store, replace func(d cache.Digest, b []byte))

func s3Damageable(t *testing.T) (func() blobstore.Store, func(cache.Digest, []byte)) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	open := func() blobstore.Store { return newS3Blobs(t, srv, bucket) }
	// Blobs of a part or less are one object under their key.
	return open, func(d cache.Digest, b []byte) {
		srv.Put(t, bucket, "registry/blobs/"+string(d.Algorithm)+"/"+d.Hex[:2]+"/"+d.Hex, b)
	}
}

// newS3Blobs is a client of bucket on srv under the prefix "registry/":
// each replica has its own.
func newS3Blobs(t *testing.T, srv *s3test.Server, bucket string) *s3.Store {
	blobs, err := s3.New(context.Background(), s3.Config{
		Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region, Prefix: "registry/",
		AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return blobs
}

func fsDamageable(t *testing.T) (func() blobstore.Store, func(cache.Digest, []byte)) {
	dir := t.TempDir()
	open := func() blobstore.Store {
		blobs, err := fs.New(fs.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		return blobs
	}
	return open, func(d cache.Digest, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type scrubCounts struct{ bytes, damaged, passes atomic.Int64 }

func (c *scrubCounts) Scrubbed(n int64)        { c.bytes.Add(n) }
func (c *scrubCounts) ScrubFoundDamaged()      { c.damaged.Add(1) }
func (c *scrubCounts) ScrubPassDone(time.Time) { c.passes.Add(1) }

// TestScrubAcrossReplicas: bytes changed at the same length in the blob
// store were served as the blob for ever. A scrub pass on either replica
// finds them: a blob only mirrors link is evicted (links, bytes, its
// share of the mirror cache), so the next pull fills it afresh; a pushed
// blob, the only copy, is reported and left. Intact blobs are untouched;
// a pass another replica holds is refused.
func TestScrubAcrossReplicas(t *testing.T) {
	for _, c := range []struct {
		name  string
		blobs damageable
		meta  func(*testing.T) func() (metastore.Store, coord.Leases)
	}{
		{"s3+postgres", s3Damageable, pgMeta},
		{"fs+postgres", fsDamageable, pgMeta},
		{"s3+badger", s3Damageable, badgerMeta},
		{"fs+badger", fsDamageable, badgerMeta},
	} {
		t.Run(c.name, func(t *testing.T) {
			openBlobs, replace := c.blobs(t)
			nm := c.meta(t)
			replica := func() *Store {
				m, l := nm()
				s, err := New(Options{Blobs: openBlobs(), Meta: m, Leases: l})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			const size = 64 << 10
			a, b, _, _ := mirrorReplicas(t, replica, 0)
			mirroredData, pushedData, intactData := randomBytes(size), randomBytes(size), randomBytes(size)
			m := fillBlob(t, a, mirroredData)
			p := push(t, a, "team/app", pushedData)
			intact := push(t, b, "team/app", intactData)
			flip := func(data []byte) []byte {
				bad := bytes.Clone(data)
				bad[size/2] ^= 1
				return bad
			}
			replace(m, flip(mirroredData))
			replace(p, flip(pushedData))

			// Another replica's pass holds the lease.
			_, release, ok, err := coord.Hold(ctx(t), a.leases, "scrub", time.Minute)
			if err != nil || !ok {
				t.Fatalf("Hold: %v, %v", ok, err)
			}
			if _, err := b.Scrub(ctx(t), 1<<30, nil); !errors.Is(err, ErrScrubElsewhere) {
				t.Fatalf("Scrub while another pass runs: %v", err)
			}
			release()

			obs := &scrubCounts{}
			rep, err := b.Scrub(ctx(t), 1<<30, obs)
			if err != nil {
				t.Fatal(err)
			}
			slices.SortFunc(rep.Damaged, func(x, y cache.Digest) int { return cmpDigest(x, y) })
			want := []cache.Digest{m, p}
			slices.SortFunc(want, func(x, y cache.Digest) int { return cmpDigest(x, y) })
			if rep.Blobs != 3 || !slices.Equal(rep.Damaged, want) || rep.Bytes != 3*size {
				t.Fatalf("Scrub = %+v; want 3 blobs, %d bytes, damaged %v", rep, 3*size, want)
			}
			if obs.damaged.Load() != 2 || obs.passes.Load() != 1 || obs.bytes.Load() != 3*size {
				t.Errorf("observer: %d damaged, %d passes, %d bytes", obs.damaged.Load(), obs.passes.Load(), obs.bytes.Load())
			}
			if !gone(t, a, m) {
				t.Fatal("the damaged mirrored blob is still linked")
			}
			if n, err := a.MirrorCacheSize(ctx(t)); err != nil || n != 0 {
				t.Errorf("mirror cache size after the eviction: %d, %v", n, err)
			}
			// The next pull fills it from upstream, whole.
			fillBlob(t, b, mirroredData)
			if got := readBlob(t, a, m); !bytes.Equal(got, mirroredData) {
				t.Fatal("the refilled blob is not upstream's bytes")
			}
			// The pushed one stays, reported: its bytes are the only copy.
			if _, err := a.HasBlob(ctx(t), "team/app", p); err != nil {
				t.Fatalf("the damaged pushed blob: %v, want it kept", err)
			}
			if got := readBlob(t, a, intact); !bytes.Equal(got, intactData) {
				t.Fatal("an intact blob changed")
			}
		})
	}
}

func cmpDigest(x, y cache.Digest) int { return strings.Compare(x.String(), y.String()) }

// TestScrubReadsBehindReadCache: with a read cache (storage s3 with a
// cache folder), the scrub opened blobs through it. A blob with a local
// copy was hashed from the copy, so damage in the blob store itself went
// unnoticed for every blob read lately (and damage in the copy alone was
// reported as the stored blob's); a blob without one was copied in, so
// each pass pushed the whole store through the cache, evicting what
// pulls had warmed. The scrub now reads the blob store behind the cache.
func TestScrubReadsBehindReadCache(t *testing.T) {
	openBlobs, replace := fsDamageable(t)
	cacheDir := t.TempDir()
	blobs, err := readcache.New(openBlobs(), readcache.Options{Dir: cacheDir, MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	m, l := badgerMeta(t)()
	s, err := New(Options{Blobs: blobs, Meta: m, Leases: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	const size = 64 << 10
	readData, coldData := randomBytes(size), randomBytes(size)
	read := push(t, s, "team/app", readData)
	cold := push(t, s, "team/app", coldData)
	if got := readBlob(t, s, read); !bytes.Equal(got, readData) { // now cached
		t.Fatal("read back other bytes")
	}
	copyOf := func(d cache.Digest) string { return filepath.Join(cacheDir, string(d.Algorithm), d.Hex) }
	if _, err := os.Stat(copyOf(read)); err != nil {
		t.Fatalf("no cached copy after a whole read: %v", err)
	}
	bad := bytes.Clone(readData)
	bad[size/2] ^= 1
	replace(read, bad)

	rep, err := s.Scrub(ctx(t), 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Blobs != 2 || !slices.Equal(rep.Damaged, []cache.Digest{read}) {
		t.Errorf("Scrub = %+v; want 2 blobs, %s damaged (in the blob store, behind its good cached copy)", rep, read)
	}
	if _, err := os.Stat(copyOf(cold)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the scrub left a cached copy of a blob no pull read (%v): a pass churns the whole store through the cache", err)
	}
}

// TestScrubNotRepeatedAfterRestart: when a pass ended was one replica's
// memory, so every replica that started (a rolling deploy, a crash)
// began a pass of the whole store scrubFirstDelay later, whatever the
// interval: deploys more often than scrub_interval read the bucket at
// each one, and a pass longer than the time between two never finished.
// A complete pass is now recorded where every replica sees it, and a
// replica started within the interval after it waits.
func TestScrubNotRepeatedAfterRestart(t *testing.T) {
	defer func(d time.Duration) { scrubFirstDelay = d }(scrubFirstDelay)
	scrubFirstDelay = 10 * time.Millisecond
	t.Run("postgres", func(t *testing.T) { scrubNotRepeated(t, pgMeta(t)) })
	t.Run("badger", func(t *testing.T) { scrubNotRepeated(t, badgerMeta(t)) })
}

func scrubNotRepeated(t *testing.T, nm func() (metastore.Store, coord.Leases)) {
	openBlobs, _ := fsDamageable(t)
	replica := func() *Store {
		m, l := nm()
		s, err := New(Options{Blobs: openBlobs(), Meta: m, Leases: l})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.Close)
		return s
	}
	run := func(s *Store) (*scrubCounts, context.CancelFunc, chan struct{}) {
		obs := &scrubCounts{}
		c, cancel := context.WithCancel(ctx(t))
		done := make(chan struct{})
		go func() { defer close(done); s.RunScrub(c, time.Hour, 1<<30, obs) }()
		return obs, cancel, done
	}
	a := replica()
	obs, stop, done := run(a)
	for deadline := time.Now().Add(10 * time.Second); obs.passes.Load() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no pass")
		}
	}
	stop() // the replica goes (a deploy); another starts
	<-done
	obs, stop, done = run(replica())
	time.Sleep(300 * time.Millisecond)
	stop()
	<-done
	if n := obs.passes.Load(); n != 0 {
		t.Fatalf("a replica started right after a complete pass ran %d more (interval 1h)", n)
	}
}
