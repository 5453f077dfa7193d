package metatest

// The byte limits of upload sessions (UploadQuota.Bytes, OwnerBytes):
// sessions' sizes plus the reservations of chunks being written.

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

func testUploadBytes(t *testing.T, s metastore.Store) {
	q := metastore.UploadQuota{Bytes: 100, OwnerBytes: 60}
	create := func(id, owner string, q metastore.UploadQuota) error {
		_, err := s.CreateUpload(ctx(t), metastore.Upload{ID: id, Repo: "r", Owner: owner, Started: at(0)}, q)
		return err
	}
	usage := func(owner string) metastore.UploadUsage {
		t.Helper()
		u, err := s.UploadUsage(ctx(t), "r", owner)
		must(t, err)
		return u
	}
	must(t, create("a", "alice", q))
	must(t, create("b", "bob", q))
	must(t, create("n", "", q))
	must(t, s.ReserveUploadBytes(ctx(t), "a", 50, q))
	if u := usage("alice"); u.OwnerBytes != 50 || u.Bytes != 50 {
		t.Fatalf("after reserving 50: %+v", u)
	}
	if got, _ := s.Upload(ctx(t), "a"); got.Reserved != 50 || got.Size != 0 {
		t.Fatalf("session after reserving: %+v", got)
	}
	err := s.ReserveUploadBytes(ctx(t), "a", 20, q)
	wantErr(t, "reserving past the owner's share", err, metastore.ErrUploadShare)
	wantErr(t, "reserving past the owner's share", err, metastore.ErrUploadSpace)
	must(t, s.ReserveUploadBytes(ctx(t), "b", 40, q))
	err = s.ReserveUploadBytes(ctx(t), "n", 11, q)
	wantErr(t, "reserving past the total", err, metastore.ErrUploadSpace)
	if errors.Is(err, metastore.ErrUploadShare) {
		t.Fatalf("a session without an owner refused for a share: %v", err)
	}
	must(t, s.ReserveUploadBytes(ctx(t), "n", 10, q)) // exactly the total
	if u := usage("bob"); u.OwnerBytes != 40 || u.Bytes != 100 {
		t.Fatalf("refused reservations changed the count: %+v", u)
	}
	// Full: no new session either.
	wantErr(t, "a session while the bytes are held", create("c", "carol", q), metastore.ErrUploadSpace)
	wantErr(t, "a session of an owner holding its share", create("c", "bob", metastore.UploadQuota{OwnerBytes: 40}), metastore.ErrUploadShare)
	if _, err := s.Upload(ctx(t), "c"); !errors.Is(err, metastore.ErrUploadUnknown) {
		t.Fatalf("a refused session was created: %v", err)
	}
	// The chunk lands shorter than reserved: its size counts, the rest
	// is free again.
	a, err := s.Upload(ctx(t), "a")
	must(t, err)
	a, err = s.AdvanceUpload(ctx(t), a, []byte("s"), 30, at(1))
	must(t, err)
	if a.Reserved != 0 || a.Size != 30 {
		t.Fatalf("advanced: %+v", a)
	}
	if u := usage("alice"); u.OwnerBytes != 30 || u.Bytes != 80 {
		t.Fatalf("after the chunk landed: %+v", u)
	}
	// A chunk that failed gives its reservation back.
	must(t, s.ReleaseUploadBytes(ctx(t), "b"))
	must(t, s.ReleaseUploadBytes(ctx(t), "b"))
	must(t, s.ReleaseUploadBytes(ctx(t), "gone"))
	if u := usage("bob"); u.OwnerBytes != 0 || u.Bytes != 40 {
		t.Fatalf("after a release: %+v", u)
	}
	wantErr(t, "reserving for a session that is gone", s.ReserveUploadBytes(ctx(t), "gone", 1, q), metastore.ErrUploadUnknown)
	// Deleting a session frees its size and its reservation.
	must(t, s.DeleteUpload(ctx(t), "a"))
	must(t, s.DeleteUpload(ctx(t), "n"))
	if u := usage("alice"); u.OwnerBytes != 0 || u.Bytes != 0 {
		t.Fatalf("after deleting: %+v", u)
	}
	must(t, create("c", "carol", q))
}

// testConcurrentUploadBytes: replicas reserving at once never pass the
// limit together.
func testConcurrentUploadBytes(t *testing.T, s metastore.Store) {
	q := metastore.UploadQuota{Bytes: 35}
	for i := range raceGoroutines {
		_, err := s.CreateUpload(ctx(t), metastore.Upload{ID: fmt.Sprint("u", i), Repo: "r", Owner: fmt.Sprint("o", i), Started: at(0)}, q)
		must(t, err)
	}
	errs := start(raceGoroutines, func(i int) error {
		return s.ReserveUploadBytes(context.Background(), fmt.Sprint("u", i), 10, q)
	})
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, metastore.ErrUploadSpace):
			t.Fatal(err)
		}
	}
	if ok != 3 {
		t.Fatalf("%d reservations of 10 within 35, want 3", ok)
	}
}
