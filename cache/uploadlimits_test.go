package cache

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestUploadLimitsFreeData: a session that grows past MaxBlobSize, or
// idles past IdleTimeout, is removed with its data, and the bytes it held
// are free again; a PutBlob holds bytes only while it writes.
func TestUploadLimitsFreeData(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := openStore(t, Options{Dir: dir})
	now := time.Now()
	s.now = func() time.Time { return now }
	s.SetUploadLimits(UploadLimits{MaxBlobSize: 100, PerOwner: 1, IdleTimeout: time.Minute})
	dataOf := func(id string) error {
		_, err := os.Stat(filepath.Join(dir, "uploads", id))
		return err
	}

	big, err := s.OpenUpload(t.Context(), "app", "ip:192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	appendChunks(t, s, "app", big.ID, bytes.Repeat([]byte("a"), 60))
	_, err = s.AppendUpload(t.Context(), "app", big.ID, 60, bytes.NewReader(bytes.Repeat([]byte("a"), 60)))
	wantErr(t, "append past MaxBlobSize", err, ErrUploadTooLarge)
	if !errors.Is(dataOf(big.ID), os.ErrNotExist) {
		t.Error("data of a session past MaxBlobSize left")
	}
	if u := s.UploadUsage(); u != (UploadUsage{}) {
		t.Errorf("usage after removal %+v", u)
	}

	idle, err := s.OpenUpload(t.Context(), "app", "ip:192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	appendChunks(t, s, "app", idle.ID, []byte("abc"))
	_, err = s.OpenUpload(t.Context(), "app", "ip:192.0.2.1")
	wantErr(t, "second session of one owner", err, ErrTooManyUploads)
	now = now.Add(2 * time.Minute)
	if _, err := s.OpenUpload(t.Context(), "app", "ip:192.0.2.1"); err != nil {
		t.Fatalf("session after the idle one expired: %v", err)
	}
	if !errors.Is(dataOf(idle.ID), os.ErrNotExist) {
		t.Error("data of an idle session left")
	}
	if u := s.UploadUsage(); u != (UploadUsage{Sessions: 1}) {
		t.Errorf("usage %+v", u)
	}

	data := bytes.Repeat([]byte("p"), 50)
	if _, err := s.PutBlob(t.Context(), FromBytes(SHA256, data), -1, bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	big2 := bytes.Repeat([]byte("p"), 101)
	_, err = s.PutBlob(t.Context(), FromBytes(SHA256, big2), -1, bytes.NewReader(big2))
	wantErr(t, "PutBlob past MaxBlobSize", err, ErrUploadTooLarge)
	if u := s.UploadUsage(); u != (UploadUsage{Sessions: 1}) {
		t.Errorf("usage after PutBlob %+v", u)
	}
}
