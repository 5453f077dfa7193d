package cache

import (
	"bytes"
	"errors"
	"os"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
)

// TestBlobCutShortIsUnknown: a blob file cut short behind the store's
// back is not the blob (StatBlob, HasBlob: ErrBlobUnknown wrapping
// blobstore.ErrSizeMismatch, which the registry answers as a lost blob),
// a push of the blob again replaces the file, and GC drops the length it
// recorded with the file it collects. Before, the store took the file's
// length for the blob's and served the cut bytes as the blob.
func TestBlobCutShortIsUnknown(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{GCGrace: time.Hour})
	data := bytes.Repeat([]byte("layer "), 1000)
	d := mustPut(t, s, data)
	mustLink(t, s, "app", d)
	if err := os.WriteFile(s.blobPath(d), data[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StatBlob(t.Context(), d); !errors.Is(err, ErrBlobUnknown) || !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("StatBlob of a file cut short: %v", err)
	}
	if _, err := s.HasBlob(t.Context(), "app", d); !errors.Is(err, ErrBlobUnknown) || !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("HasBlob of a file cut short: %v", err)
	}
	mustPut(t, s, data)
	if info, err := s.HasBlob(t.Context(), "app", d); err != nil || info.Size != int64(len(data)) {
		t.Fatalf("HasBlob after the push again: %+v, %v", info, err)
	}

	if err := s.UnlinkBlob(t.Context(), "app", d); err != nil {
		t.Fatal(err)
	}
	age(t, s.blobPath(d), 2*time.Hour)
	if st, err := s.GC(); err != nil || st.BlobsRemoved != 1 {
		t.Fatalf("GC = %+v, %v", st, err)
	}
	err := s.db.View(func(txn *badger.Txn) error {
		_, err := txn.Get(blobSizeKey(d))
		return err
	})
	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("the length recorded for a collected blob: %v, want it dropped", err)
	}
}

// TestGCRecordsMissingBlobSizes: a blob stored before lengths were
// recorded gets its record from the next full GC pass (from its file as
// it is then), so a cut after it is noticed.
func TestGCRecordsMissingBlobSizes(t *testing.T) {
	t.Parallel()
	s := openStore(t, Options{GCGrace: time.Hour})
	data := bytes.Repeat([]byte("old layer "), 1000)
	d := mustPut(t, s, data)
	mustLink(t, s, "app", d)
	if err := s.update(func(txn *badger.Txn) error { return txn.Delete(blobSizeKey(d)) }); err != nil {
		t.Fatal(err)
	}
	if st, err := s.GC(); err != nil || st.BlobsRemoved != 0 {
		t.Fatalf("GC = %+v, %v", st, err)
	}
	if err := os.WriteFile(s.blobPath(d), data[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.HasBlob(t.Context(), "app", d); !errors.Is(err, blobstore.ErrSizeMismatch) {
		t.Fatalf("HasBlob of a file cut short after the GC pass: %v, want a size mismatch", err)
	}
}
