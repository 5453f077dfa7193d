package cache

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/trickle"
)

// TestCancelStopsArrivingChunk: the single-node store's side of the rule
// composite's test of the same name checks: while a chunk trickles in, a
// commit is refused at once (ErrOffsetMismatch), a cancel stops the chunk
// (ErrUploadUnknown) and removes the session, and neither waits for the
// client's body; a second chunk at the same time is refused as before.
func TestCancelStopsArrivingChunk(t *testing.T) {
	s := openStore(t, Options{})
	ctx := context.Background()
	u, err := s.NewUpload(ctx, "team/app")
	if err != nil {
		t.Fatal(err)
	}
	pr, stop := trickle.New(50 * time.Millisecond)
	defer stop()
	appended := make(chan error, 1)
	go func() {
		_, err := s.AppendUpload(ctx, "team/app", u.ID, 0, pr)
		appended <- err
	}()
	time.Sleep(300 * time.Millisecond)

	start := time.Now()
	if _, err := s.AppendUpload(ctx, "team/app", u.ID, 0, io.LimitReader(pr, 0)); !errors.Is(err, ErrOffsetMismatch) {
		t.Fatalf("a second chunk: %v, want ErrOffsetMismatch", err)
	}
	if _, err := s.CommitUpload(ctx, "team/app", u.ID, FromBytes(SHA256, nil)); !errors.Is(err, ErrOffsetMismatch) {
		t.Fatalf("commit while a chunk arrives: %v, want ErrOffsetMismatch", err)
	}
	if err := s.CancelUpload(ctx, "team/app", u.ID); err != nil {
		t.Fatalf("cancel while a chunk arrives: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("commit and cancel took %s", d)
	}
	select {
	case err := <-appended:
		if !errors.Is(err, ErrUploadUnknown) {
			t.Fatalf("the cancelled chunk: %v, want ErrUploadUnknown", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the chunk still arrives 10 s after its session was cancelled")
	}
	if _, err := s.GetUpload(ctx, "team/app", u.ID); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("the cancelled session: %v", err)
	}
	if n := len(s.sessions); n != 0 {
		t.Fatalf("%d session locks left", n)
	}
	if use := s.UploadUsage(); use.Sessions != 0 || use.Bytes != 0 {
		t.Fatalf("after the cancel, open uploads count %+v, want nothing", use)
	}
}

// TestCommitWaitsForCommit: a commit retried while the first still holds
// the session waits for it (bounded), then finds the session gone.
func TestCommitWaitsForCommit(t *testing.T) {
	s := openStore(t, Options{})
	ctx := context.Background()
	u, err := s.NewUpload(ctx, "team/app")
	if err != nil {
		t.Fatal(err)
	}
	unlock, _, err := s.lockSession(ctx, u.ID, lockCommit)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		if err := s.removeUpload(u.ID); err != nil {
			t.Error(err)
		}
		unlock()
	}()
	if _, err := s.CommitUpload(ctx, "team/app", u.ID, FromBytes(SHA256, nil)); !errors.Is(err, ErrUploadUnknown) {
		t.Fatalf("the retried commit: %v, want ErrUploadUnknown once the first is done", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	u2, _ := s.NewUpload(ctx, "team/app")
	unlock2, _, _ := s.lockSession(ctx, u2.ID, lockCommit)
	defer unlock2()
	if err := s.CancelUpload(cctx, "team/app", u2.ID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a cancel whose client left while it waited: %v", err)
	}
}
