package cache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/options"
)

func openStore(t testing.TB, opts Options) *Store {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func digestOf(b []byte) Digest { return FromBytes(SHA256, b) }

func mustPut(t testing.TB, s *Store, b []byte) Digest {
	t.Helper()
	d := digestOf(b)
	if _, err := s.PutBlob(t.Context(), d, int64(len(b)), bytes.NewReader(b)); err != nil {
		t.Fatalf("PutBlob: %v", err)
	}
	return d
}

func mustLink(t testing.TB, s *Store, repo string, d Digest) {
	t.Helper()
	if err := s.LinkBlob(t.Context(), repo, d); err != nil {
		t.Fatalf("LinkBlob(%s): %v", repo, err)
	}
}

func dirEntries(t testing.TB, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func wantErr(t testing.TB, what string, got, want error) {
	t.Helper()
	if want == nil && got != nil || want != nil && !errors.Is(got, want) {
		t.Fatalf("%s: got error %v, want %v", what, got, want)
	}
}

// age puts a file's mtime in the past, as if written long ago.
func age(t testing.TB, path string, d time.Duration) {
	t.Helper()
	old := time.Now().Add(-d)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
}

func TestOpenLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	for _, sub := range []string{"blobs/sha256/00", "blobs/sha512/ff", "uploads", "tmp", "meta"} {
		if fi, err := os.Stat(filepath.Join(dir, sub)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", sub, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := Open(Options{}); err == nil {
		t.Fatal("Open without a directory succeeded")
	}
}

func TestBackgroundLoopStopsOnClose(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{GCInterval: time.Millisecond})
	mustPut(t, s, []byte("x"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestCheckMetadataDir(t *testing.T) {
	dir := t.TempDir()
	for _, bad := range []string{dir, dir + "/", filepath.Join(dir, "tmp"), filepath.Join(dir, "uploads", "m"), filepath.Join(dir, "blobs", "sha256", "00")} {
		if _, err := Open(Options{Dir: dir, MetadataDir: bad}); err == nil {
			t.Errorf("Open with MetadataDir %s inside the store's folders succeeded", bad)
		}
	}
	for _, good := range []string{filepath.Join(dir, "meta"), filepath.Join(dir, "tmpmeta"), t.TempDir()} {
		if err := CheckMetadataDir(dir, good); err != nil {
			t.Errorf("MetadataDir %s: %v", good, err)
		}
	}
}

// The store's metadata is written uncompressed, but a store written by an
// earlier version holds Snappy-compressed tables: they stay readable.
func TestOpenReadsCompressedMetadata(t *testing.T) {
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	d := mustPut(t, s, []byte("layer written before the upgrade"))
	mustLink(t, s, "old/repo", d)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Rewrite every key into Snappy-compressed tables only.
	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "meta")).
		WithCompression(options.Snappy).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	var entries []*badger.Entry
	err = db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			e := badger.NewEntry(item.KeyCopy(nil), v).WithMeta(item.UserMeta())
			e.ExpiresAt = item.ExpiresAt()
			entries = append(entries, e)
		}
		return nil
	})
	if err != nil || len(entries) == 0 {
		t.Fatalf("read metadata: %d keys, %v", len(entries), err)
	}
	if err := db.DropAll(); err != nil {
		t.Fatal(err)
	}
	wb := db.NewWriteBatch()
	for _, e := range entries {
		if err := wb.SetEntry(e); err != nil {
			t.Fatal(err)
		}
	}
	if err := wb.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil { // flushes the memtable to a compressed table
		t.Fatal(err)
	}

	s = openStore(t, Options{Dir: dir})
	if _, err := s.HasBlob(t.Context(), "old/repo", d); err != nil {
		t.Fatalf("link written compressed: %v", err)
	}
}
