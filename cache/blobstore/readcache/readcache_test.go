package readcache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/storetest"
)

// TestContract: a cache in front of a folder keeps the blob store
// contract. Every Backend call is another replica: its own cache folder
// over the same backend folder.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		dir := t.TempDir()
		return func() blobstore.Store {
			return newCache(t, newBackend(t, dir), t.TempDir(), 64<<20)
		}
	})
}

// TestContractDamage: a backend file rewritten behind the cache's back
// reads as what it is through the cache, and the cache keeps no copy of
// it: a push heals the blob on every replica, the one that read the
// damaged bytes included.
func TestContractDamage(t *testing.T) {
	storetest.RunDamage(t, func(t *testing.T) storetest.Damage {
		dir := t.TempDir()
		return storetest.Damage{
			Backend: func() blobstore.Store { return newCache(t, newBackend(t, dir), t.TempDir(), 64<<20) },
			Replace: func(t *testing.T, d blobstore.Digest, b []byte) {
				if err := os.WriteFile(filepath.Join(dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex), b, 0o644); err != nil {
					t.Fatal(err)
				}
			},
		}
	})
}

// TestContractWarm runs the contract with every blob read whole once
// after it is put, so the reads the suite checks are served from copies.
func TestContractWarm(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		dir := t.TempDir()
		return func() blobstore.Store {
			return warming{newCache(t, newBackend(t, dir), t.TempDir(), 64<<20)}
		}
	})
}

// warming reads each blob it puts through the cache, so it is cached.
type warming struct{ *Store }

func (w warming) Put(ctx context.Context, d blobstore.Digest, size int64, r io.Reader) (blobstore.Info, error) {
	info, err := w.Store.Put(ctx, d, size, r)
	if err == nil {
		b, err := w.Open(ctx, d)
		if err != nil {
			return info, err
		}
		_, err = io.Copy(io.Discard, b)
		b.Close()
		if err != nil {
			return info, err
		}
	}
	return info, err
}

func newBackend(t testing.TB, dir string) *fs.Store {
	t.Helper()
	s, err := fs.New(fs.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newCache(t testing.TB, backend blobstore.Store, dir string, max int64) *Store {
	t.Helper()
	s, err := New(backend, Options{Dir: dir, MaxBytes: max})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return c
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func put(t testing.TB, s blobstore.Store, c []byte) blobstore.Digest {
	t.Helper()
	d := blobstore.FromBytes(blobstore.SHA256, c)
	if _, err := s.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatal(err)
	}
	return d
}

// read reads d whole through s and reports whether a cached copy served it.
func read(t *testing.T, s *Store, d blobstore.Digest, want []byte) (fromCopy bool) {
	t.Helper()
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatalf("Open %s: %v", d, err)
	}
	_, fromCopy = b.(fileBlob)
	got, err := io.ReadAll(b)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close %s: %v", d, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: read %d bytes, not the blob's %d", d, len(got), len(want))
	}
	return fromCopy
}

func cached(s *Store, d blobstore.Digest) bool {
	_, err := os.Stat(s.path(d))
	return err == nil
}

// backendPath is where the fs backend keeps d.
func backendPath(dir string, d blobstore.Digest) string {
	return filepath.Join(dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex)
}

// TestWarmReadIsTheFile: the second read is the cached file, whose
// *os.File is within reach of sendfile, and it no longer needs the
// backend's bytes.
func TestWarmReadIsTheFile(t *testing.T) {
	bdir := t.TempDir()
	s := newCache(t, newBackend(t, bdir), t.TempDir(), 64<<20)
	c := randomBytes(3<<20 + 7)
	d := put(t, s, c)
	if cached(s, d) {
		t.Fatal("a Put was cached; only reads fill the cache")
	}
	if read(t, s, d, c) {
		t.Fatal("the first read came from a copy")
	}
	if !cached(s, d) || s.Size() != int64(len(c)) {
		t.Fatalf("after a whole read: cached %v, size %d", cached(s, d), s.Size())
	}
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.(syscall.Conn); !ok {
		t.Errorf("a cached blob is a %T, which sendfile cannot reach", b)
	}
	if _, ok := b.(io.WriterTo); !ok {
		t.Errorf("a cached blob is a %T, without File.WriteTo", b)
	}
	b.Close()
	// The backend's bytes changed under it (same size): the bytes come
	// from the copy.
	bad := bytes.Clone(c)
	bad[0] ^= 1
	if err := os.WriteFile(backendPath(bdir, d), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if !read(t, s, d, c) {
		t.Fatal("the second read did not come from the copy")
	}
	// Gone from the backend (another replica deleted it): gone here too.
	if err := os.Remove(backendPath(bdir, d)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open of a blob the backend lost: %v, want ErrNotFound", err)
	}
	if cached(s, d) || s.Size() != 0 {
		t.Fatal("the copy of a deleted blob was kept")
	}
}

// TestIncompleteReadsAreNotKept: a read that stops early, seeks away or
// reads only a range leaves nothing in the cache.
func TestIncompleteReadsAreNotKept(t *testing.T) {
	s := newCache(t, newBackend(t, t.TempDir()), t.TempDir(), 64<<20)
	c := randomBytes(1 << 20)
	d := put(t, s, c)

	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(b, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if cached(s, d) {
		t.Fatal("a read cut short was kept")
	}

	// Skipping bytes: what a client's Range does through ServeContent.
	b, err = s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seek(10, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, b); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if cached(s, d) || s.Size() != 0 {
		t.Fatal("a read from offset 10 was kept")
	}
	if entries, _ := os.ReadDir(s.tmp); len(entries) != 0 {
		t.Fatalf("temp files left: %v", entries)
	}
	// Seeking to the end for the size and back, as ServeContent does,
	// still makes a copy.
	b, err = s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seek(0, io.SeekEnd); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, b); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if !cached(s, d) {
		t.Fatal("a whole read after seeks to the end and back was not kept")
	}
}

// TestWrongBytesAreNotKept: a backend whose bytes do not hash to the
// digest gets its read failed at the end, and no copy is kept.
func TestWrongBytesAreNotKept(t *testing.T) {
	bdir := t.TempDir()
	s := newCache(t, newBackend(t, bdir), t.TempDir(), 64<<20)
	c := randomBytes(1 << 20)
	d := put(t, s, c)
	bad := bytes.Clone(c)
	bad[12345] ^= 1
	if err := os.WriteFile(backendPath(bdir, d), bad, 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(io.Discard, b)
	b.Close()
	if !errors.Is(err, blobstore.ErrDigestMismatch) {
		t.Fatalf("reading bytes that are not the blob: %v, want ErrDigestMismatch", err)
	}
	if cached(s, d) || s.Size() != 0 {
		t.Fatal("bytes that are not the blob were kept")
	}
}

// TestEvictsLeastRecentlyRead: above the size, the copy read longest ago
// goes; a blob larger than the whole cache is never copied.
func TestEvictsLeastRecentlyRead(t *testing.T) {
	s := newCache(t, newBackend(t, t.TempDir()), t.TempDir(), 250<<10)
	var blobs [][]byte
	var ds []blobstore.Digest
	for range 3 {
		c := randomBytes(100 << 10)
		blobs = append(blobs, c)
		ds = append(ds, put(t, s, c))
	}
	read(t, s, ds[0], blobs[0])
	read(t, s, ds[1], blobs[1])
	if !read(t, s, ds[0], blobs[0]) { // 0 is now the most recent
		t.Fatal("blob 0 not cached")
	}
	read(t, s, ds[2], blobs[2])
	if !cached(s, ds[0]) || cached(s, ds[1]) || !cached(s, ds[2]) {
		t.Fatalf("cached: %v %v %v; want blob 1 (least recently read) evicted", cached(s, ds[0]), cached(s, ds[1]), cached(s, ds[2]))
	}
	if s.Size() != 200<<10 {
		t.Fatalf("size %d, want %d", s.Size(), 200<<10)
	}
	huge := randomBytes(300 << 10)
	dh := put(t, s, huge)
	read(t, s, dh, huge)
	if cached(s, dh) || !cached(s, ds[0]) || !cached(s, ds[2]) {
		t.Fatal("a blob larger than the cache was copied, or evicted others")
	}
}

// TestRestartCounts: a new Store on the folder counts the copies there,
// oldest read first out, and removes half-written ones.
func TestRestartCounts(t *testing.T) {
	bdir, cdir := t.TempDir(), t.TempDir()
	backend := newBackend(t, bdir)
	s := newCache(t, backend, cdir, 1<<20)
	var blobs [][]byte
	var ds []blobstore.Digest
	for i := range 3 {
		c := randomBytes(100 << 10)
		blobs = append(blobs, c)
		ds = append(ds, put(t, s, c))
		read(t, s, ds[i], c)
		// Modification times order the copies at start.
		old := time.Now().Add(time.Duration(i-10) * time.Minute)
		os.Chtimes(s.path(ds[i]), old, old)
	}
	os.WriteFile(filepath.Join(cdir, "tmp", "half"), []byte("x"), 0o644)
	old := time.Now().Add(-2 * staleTemp)
	os.Chtimes(filepath.Join(cdir, "tmp", "half"), old, old)
	os.WriteFile(filepath.Join(cdir, "tmp", "being-written"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(cdir, "sha256", "not-a-digest"), []byte("x"), 0o644)

	// Room for two: the oldest copy (blob 0) goes at start.
	s2 := newCache(t, backend, cdir, 250<<10)
	if s2.Size() != 200<<10 || cached(s2, ds[0]) || !cached(s2, ds[1]) || !cached(s2, ds[2]) {
		t.Fatalf("after restart: size %d, cached %v %v %v", s2.Size(), cached(s2, ds[0]), cached(s2, ds[1]), cached(s2, ds[2]))
	}
	if _, err := os.Stat(filepath.Join(cdir, "tmp", "half")); !os.IsNotExist(err) {
		t.Error("a half-written copy survived the start")
	}
	if _, err := os.Stat(filepath.Join(cdir, "tmp", "being-written")); err != nil {
		t.Error("a copy still being written was removed at start")
	}
	if _, err := os.Stat(filepath.Join(cdir, "sha256", "not-a-digest")); err != nil {
		t.Error("a file that is not the cache's was removed")
	}
	if !read(t, s2, ds[1], blobs[1]) {
		t.Fatal("a copy counted at start was not served")
	}
}

// TestDeleteDropsTheCopy: deleting through the cache removes the copy
// with the blob, and a copy removed behind the cache's back is a miss.
func TestDeleteDropsTheCopy(t *testing.T) {
	s := newCache(t, newBackend(t, t.TempDir()), t.TempDir(), 1<<20)
	c := randomBytes(10 << 10)
	d := put(t, s, c)
	read(t, s, d, c)
	if err := s.Delete(ctx(t), d); err != nil {
		t.Fatal(err)
	}
	if cached(s, d) || s.Size() != 0 {
		t.Fatal("the copy outlived Delete")
	}
	if _, err := s.Open(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Fatalf("Open after Delete: %v", err)
	}
	d = put(t, s, c)
	read(t, s, d, c)
	os.Remove(s.path(d))
	if read(t, s, d, c) {
		t.Fatal("a removed copy was served")
	}
}

// TestRefusesBadOptions names what is missing.
func TestRefusesBadOptions(t *testing.T) {
	b := newBackend(t, t.TempDir())
	for _, o := range []Options{{MaxBytes: 1}, {Dir: t.TempDir()}, {Dir: t.TempDir(), MaxBytes: -1}} {
		if _, err := New(b, o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

// TestConcurrentReads: many readers of a few cold blobs at once, in a
// cache that holds only some of them, all read the right bytes and the
// count matches the files left.
func TestConcurrentReads(t *testing.T) {
	s := newCache(t, newBackend(t, t.TempDir()), t.TempDir(), 300<<10)
	var blobs [][]byte
	var ds []blobstore.Digest
	for range 4 {
		c := randomBytes(100 << 10)
		blobs = append(blobs, c)
		ds = append(ds, put(t, s, c))
	}
	done := make(chan error)
	for i := range 16 {
		go func() {
			k := i % len(ds)
			b, err := s.Open(context.Background(), ds[k])
			if err != nil {
				done <- err
				return
			}
			got, err := io.ReadAll(b)
			b.Close()
			if err == nil && !bytes.Equal(got, blobs[k]) {
				err = errors.New("wrong bytes")
			}
			done <- err
		}()
	}
	for range 16 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	var onDisk int64
	for _, d := range ds {
		if fi, err := os.Stat(s.path(d)); err == nil {
			onDisk += fi.Size()
		}
	}
	if s.Size() != onDisk || onDisk > 300<<10 {
		t.Fatalf("counted %d bytes, %d on disk, limit %d", s.Size(), onDisk, 300<<10)
	}
}

// TestContractS3: the same contract with the cache in front of S3
// (versitygw), the backend replicas run it on.
func TestContractS3(t *testing.T) {
	srv := s3test.Start(t)
	bucket := srv.Bucket(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) storetest.Backend {
		prefix := fmt.Sprintf("r%d/", n.Add(1))
		return func() blobstore.Store {
			backend, err := s3.New(context.Background(), s3.Config{
				Bucket: bucket, Endpoint: srv.Endpoint, Region: srv.Region, Prefix: prefix,
				AccessKey: srv.AccessKey, SecretKey: srv.SecretKey, PathStyle: true, PartSize: 5 << 20,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return newCache(t, backend, t.TempDir(), 64<<20)
		}
	})
}

// TestReadKeepsTheOrder: a read of a copy marks it recently read (its
// modification time, which orders the copies at the next start), but a
// copy read within the last minute is left alone: a hot blob's reads do
// not each write its inode.
func TestReadKeepsTheOrder(t *testing.T) {
	backend := newBackend(t, t.TempDir())
	s := newCache(t, backend, t.TempDir(), 1<<20)
	c := randomBytes(10 << 10)
	d := put(t, s, c)
	read(t, s, d, c)
	mtime := func() time.Time {
		fi, err := os.Stat(s.path(d))
		if err != nil {
			t.Fatal(err)
		}
		return fi.ModTime()
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(s.path(d), old, old)
	if !read(t, s, d, c) {
		t.Fatal("the copy was not served")
	}
	if time.Since(mtime()) > time.Minute {
		t.Fatalf("a read left the copy's time at %v", mtime())
	}
	recent := time.Now().Add(-30 * time.Second).Truncate(time.Second)
	os.Chtimes(s.path(d), recent, recent)
	read(t, s, d, c)
	if !mtime().Equal(recent) {
		t.Fatalf("a read within a minute moved the time from %v to %v", recent, mtime())
	}
}

// TestOpenRecordedTrustsTheCopy: OpenRecorded serves a copy without
// asking the backend (the caller's record vouches for the blob), so it
// serves it even where the backend lost it, while Open, which asks,
// does not. A copy of another size than the record's is not the blob's:
// it is dropped and the backend read.
func TestOpenRecordedTrustsTheCopy(t *testing.T) {
	bdir := t.TempDir()
	s := newCache(t, newBackend(t, bdir), t.TempDir(), 64<<20)
	c := randomBytes(1<<20 + 3)
	d := put(t, s, c)
	b, err := s.OpenRecorded(ctx(t), d, int64(len(c)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, b); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if !cached(s, d) {
		t.Fatal("a whole read through OpenRecorded left no copy")
	}
	if err := os.Remove(backendPath(bdir, d)); err != nil {
		t.Fatal(err)
	}
	b, err = s.OpenRecorded(ctx(t), d, int64(len(c)))
	if err != nil {
		t.Fatalf("OpenRecorded of a cached blob: %v", err)
	}
	if _, ok := b.(fileBlob); !ok {
		t.Fatalf("OpenRecorded of a cached blob is a %T, not the copy", b)
	}
	got, err := io.ReadAll(b)
	b.Close()
	if err != nil || !bytes.Equal(got, c) {
		t.Fatalf("the copy: %d bytes, %v", len(got), err)
	}
	if _, err := s.OpenRecorded(ctx(t), d, int64(len(c))+1); err == nil {
		t.Fatal("OpenRecorded with another size served something")
	}
	if cached(s, d) || s.Size() != 0 {
		t.Fatal("a copy of another size than the record's was kept")
	}
}

// TestCopyFromSmallReads: a blob read in pieces much smaller than the
// copy's write buffer, and not dividing it, is kept whole and exact (the
// copy gathers them into full-buffer writes and writes the tail at the
// end).
func TestCopyFromSmallReads(t *testing.T) {
	s := newCache(t, newBackend(t, t.TempDir()), t.TempDir(), 64<<20)
	c := randomBytes(2<<20 + 12345)
	d := put(t, s, c)
	b, err := s.Open(ctx(t), d)
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	p := make([]byte, 999)
	for {
		n, err := b.Read(p)
		got = append(got, p[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, c) {
		t.Fatal("the first read returned other bytes")
	}
	if !read(t, s, d, c) {
		t.Fatal("the second read did not come from the copy")
	}
}
