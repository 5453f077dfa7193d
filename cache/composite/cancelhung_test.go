package composite

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// stopBeforeDelete is the metadata in a PostgreSQL of the test's own,
// whose server is stopped (SIGSTOP) right before the next DeleteUpload
// once armed: a cancel that meets the database hung at its last step.
type stopBeforeDelete struct {
	*pgmeta.Store
	armed bool
	stop  func()
}

func (m *stopBeforeDelete) DeleteUpload(ctx context.Context, id string) error {
	if m.armed {
		m.armed = false
		m.stop()
	}
	return m.Store.DeleteUpload(ctx, id)
}

// TestCancelWithDatabaseHung: a cancel whose removal of the session's
// record meets PostgreSQL hung answers the database's unavailability
// (503, the client retries), and the session is as it was, bytes and
// all: once the database continues the client's session goes on. Before,
// the cancel freed the bytes, then ignored the failed removal and was
// acknowledged: the session the client was told was gone was still
// there, its bytes freed under it.
func TestCancelWithDatabaseHung(t *testing.T) {
	pg := pgtest.Start(t)
	meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: pg.NewDatabase(t), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(meta.Close)
	stopped := false
	m := &stopBeforeDelete{Store: meta, stop: func() {
		if err := pg.Pause(); err != nil {
			t.Skip(err) // no signals on this system
		}
		stopped = true
	}}
	defer func() {
		if stopped {
			_ = pg.Resume()
		}
	}()
	blobs, _ := fsDamageable(t)
	s, err := New(Options{Blobs: blobs(), Meta: m, Leases: meta.Leases()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	u, err := s.OpenUpload(ctx(t), "team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	data := randomBytes(3000)
	if _, err := s.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader(data[:1000])); err != nil {
		t.Fatal(err)
	}

	m.armed = true
	err = s.CancelUpload(ctx(t), "team/app", u.ID)
	if rerr := pg.Resume(); rerr != nil {
		t.Fatal(rerr)
	}
	stopped = false
	if !errors.Is(err, cache.ErrUnavailable) {
		t.Fatalf("cancel with the database hung at the record's removal: %v, want ErrUnavailable", err)
	}
	// The session is whole: it takes its next chunk and commits.
	var got cache.Upload
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		// The pool reconnects; the chunk's lease may wait out the
		// cancel's, whose release met the hung database.
		got, err = s.AppendUpload(ctx(t), "team/app", u.ID, 1000, bytes.NewReader(data[1000:]))
		if err == nil || !errors.Is(err, cache.ErrUnavailable) && !errors.Is(err, cache.ErrOffsetMismatch) || time.Now().After(deadline) {
			break
		}
	}
	if err != nil || got.Size != int64(len(data)) {
		t.Fatalf("the session's next chunk after the failed cancel: size %d, %v", got.Size, err)
	}
	d := cache.FromBytes(cache.SHA256, data)
	if _, err := s.CommitUpload(ctx(t), "team/app", u.ID, d); err != nil {
		t.Fatalf("commit after the failed cancel: %v", err)
	}
	if !bytes.Equal(readBlob(t, s, d), data) {
		t.Fatal("the blob is not the session's bytes")
	}
}
