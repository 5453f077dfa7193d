//go:build linux

package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestReserveRefusesBlobBytes: with a reserve, a Put or an Append that
// would cross it fails with ErrStorageFull and leaves nothing (no blob,
// no temp file, the session as it was); once space is freed the same
// writes succeed.
func TestReserveRefusesBlobBytes(t *testing.T) {
	const mib = 1 << 20
	dir := tmpfs.Mount(t, 32*mib)
	s, err := New(Options{Dir: dir, Reserve: Reserve{Bytes: 8 * mib}})
	if err != nil {
		t.Fatal(err)
	}
	c := randomBytes(4 * mib)
	d := blobstore.FromBytes(blobstore.SHA256, c)
	sess, _ := started(t, s, c[:mib])

	filler := tmpfs.FillTo(t, dir, 10*mib) // 2 MiB above the reserve
	for _, size := range []int64{int64(len(c)), -1} {
		if _, err := s.Put(ctx(t), d, size, bytes.NewReader(c)); !errors.Is(err, ErrStorageFull) || !IsStorageFull(err) {
			t.Errorf("Put of 4 MiB (declared %d) with 2 MiB above the reserve: %v, want ErrStorageFull", size, err)
		}
	}
	if _, err := sess.Append(ctx(t), mib, bytes.NewReader(c[mib:])); !errors.Is(err, ErrStorageFull) {
		t.Errorf("Append of 3 MiB with 2 MiB above the reserve: %v, want ErrStorageFull", err)
	}
	if _, err := s.Stat(ctx(t), d); !errors.Is(err, blobstore.ErrNotFound) {
		t.Errorf("blob after refused writes: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "uploads", sess.ID())); err != nil || fi.Size() != mib || sess.Size() != mib {
		t.Errorf("session after a refused Append: file %v, size %d", err, sess.Size())
	}
	if left, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(left) != 0 {
		t.Errorf("tmp/ holds %d files after refused puts", len(left))
	}

	os.Remove(filler)
	if _, err := sess.Append(ctx(t), mib, bytes.NewReader(c[mib:])); err != nil {
		t.Fatalf("Append once space is freed: %v", err)
	}
	if _, err := sess.Commit(ctx(t), d, int64(len(c))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx(t), d, int64(len(c)), bytes.NewReader(c)); err != nil {
		t.Fatalf("Put once space is freed: %v", err)
	}
	wantBytes(t, s, d, c)
}
