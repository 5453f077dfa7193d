package composite

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/internal/trickle"
)

// TestCancelStopsArrivingChunk: while a chunk trickles into a session on
// this replica, a commit of that session is refused at once
// (ErrOffsetMismatch), and a cancel stops the chunk (which ends in
// ErrUploadUnknown) and removes the session, without waiting for the
// client's body.
func TestCancelStopsArrivingChunk(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a := replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		pr, stop := trickle.New(50 * time.Millisecond)
		defer stop()
		appended := make(chan error, 1)
		go func() {
			_, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, pr)
			appended <- err
		}()
		time.Sleep(300 * time.Millisecond) // the chunk holds the session

		start := time.Now()
		if _, err := a.CommitUpload(ctx(t), "team/app", u.ID, cache.FromBytes(cache.SHA256, nil)); !errors.Is(err, cache.ErrOffsetMismatch) {
			t.Fatalf("commit while a chunk arrives: %v, want ErrOffsetMismatch", err)
		}
		if err := a.CancelUpload(ctx(t), "team/app", u.ID); err != nil {
			t.Fatalf("cancel while a chunk arrives: %v", err)
		}
		if d := time.Since(start); d > 10*time.Second {
			t.Fatalf("commit and cancel took %s", d)
		}
		select {
		case err := <-appended:
			if !errors.Is(err, cache.ErrUploadUnknown) {
				t.Fatalf("the cancelled chunk: %v, want ErrUploadUnknown", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("the chunk still arrives 10 s after its session was cancelled")
		}
		if _, err := a.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Fatalf("the cancelled session: %v", err)
		}
	})
}

// TestBusyOnAnotherReplica: while a chunk trickles into a session on one
// replica, a commit or cancel of it on another waits at most holdWait and
// then fails with ErrOffsetMismatch (the registry's 416 RANGE_INVALID, as
// the README says), not with the wait's own deadline (a 500), and the
// session and its chunk go on untouched.
func TestBusyOnAnotherReplica(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a, b := replica(), replica()
		a.holdWait = 500 * time.Millisecond
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		pr, stop := trickle.New(50 * time.Millisecond)
		appended := make(chan error, 1)
		go func() {
			_, err := b.AppendUpload(ctx(t), "team/app", u.ID, 0, pr)
			appended <- err
		}()
		time.Sleep(300 * time.Millisecond) // the chunk holds the session on b

		if _, err := a.CommitUpload(ctx(t), "team/app", u.ID, cache.FromBytes(cache.SHA256, nil)); !errors.Is(err, cache.ErrOffsetMismatch) {
			t.Errorf("commit on a while a chunk arrives on b: %v, want ErrOffsetMismatch", err)
		}
		if err := a.CancelUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrOffsetMismatch) {
			t.Errorf("cancel on a while a chunk arrives on b: %v, want ErrOffsetMismatch", err)
		}
		stop()
		if err := <-appended; err != nil {
			t.Fatalf("the chunk on b: %v", err)
		}
		got, err := a.GetUpload(ctx(t), "team/app", u.ID)
		if err != nil || got.Size == 0 {
			t.Fatalf("the session after its chunk: %+v, %v", got, err)
		}
	})
}

// TestCancelBesideStartingChunk: a cancel sent at the moment a chunk
// starts on the same replica never waits behind that chunk's body: it
// either comes first (the chunk then finds the session gone or busy) or
// stops the chunk. Before, a cancel that looked for local chunks just
// before the chunk registered, and asked for the lease just after the
// chunk took it, waited out holdWait behind the trickle.
func TestCancelBesideStartingChunk(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a := replica()
		a.holdWait = 3 * time.Second
		for i := range 40 {
			u, err := a.OpenUpload(ctx(t), "team/app", "")
			if err != nil {
				t.Fatal(err)
			}
			pr, stop := trickle.New(20 * time.Millisecond)
			gate := make(chan struct{})
			appended := make(chan error, 1)
			go func() {
				<-gate
				_, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, pr)
				appended <- err
			}()
			start := time.Now()
			close(gate)
			err = a.CancelUpload(ctx(t), "team/app", u.ID)
			took := time.Since(start)
			stop()
			aerr := <-appended
			if err != nil || took > 2*time.Second {
				t.Fatalf("try %d: cancel beside a starting chunk: %v after %s (the chunk: %v)", i, err, took, aerr)
			}
			if _, err := a.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
				t.Fatalf("try %d: the cancelled session: %v", i, err)
			}
		}
	})
}

// TestCancelInterruptsStalledChunk: a cancel on the replica receiving a
// chunk whose body has stalled (no byte at all) calls the request's
// interrupt (the registry's: the connection's read deadline), so neither
// the cancel nor the chunk waits for the client.
func TestCancelInterruptsStalledChunk(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a := replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		pr, pw := io.Pipe() // nothing is ever written
		defer pw.Close()
		interrupted := make(chan struct{})
		chunkCtx := cache.WithChunkInterrupt(ctx(t), func() {
			close(interrupted)
			pr.CloseWithError(errors.New("read deadline"))
		})
		appended := make(chan error, 1)
		go func() {
			_, err := a.AppendUpload(chunkCtx, "team/app", u.ID, 0, pr)
			appended <- err
		}()
		time.Sleep(300 * time.Millisecond) // the chunk holds the session

		start := time.Now()
		if err := a.CancelUpload(ctx(t), "team/app", u.ID); err != nil {
			t.Fatalf("cancel beside a stalled chunk: %v", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("cancel beside a stalled chunk took %s", d)
		}
		select {
		case <-interrupted:
		default:
			t.Fatal("the stalled chunk's read was not interrupted")
		}
		if err := <-appended; !errors.Is(err, cache.ErrUploadUnknown) {
			t.Fatalf("the interrupted chunk: %v, want ErrUploadUnknown", err)
		}
		if _, err := a.GetUpload(ctx(t), "team/app", u.ID); !errors.Is(err, cache.ErrUploadUnknown) {
			t.Fatalf("the cancelled session: %v", err)
		}
	})
}

// TestChunkAfterUnreleasedLease: the lease of a chunk that was answered
// 202 but whose release did not get through (its connection to
// PostgreSQL cut) is freed in the background a moment later; the
// client's next chunk, sent at once, waits for that instead of failing
// with ErrOffsetMismatch (the registry's 416 "upload offset moved",
// which docker takes as fatal). Seen in e2e TestReplicaNetworkCuts.
func TestChunkAfterUnreleasedLease(t *testing.T) {
	each(t, func(t *testing.T, replica replicas) {
		a := replica()
		u, err := a.OpenUpload(ctx(t), "team/app", "")
		if err != nil {
			t.Fatal(err)
		}
		l, ok, err := a.leases.Acquire(ctx(t), "upload/"+u.ID, sessionTTL)
		if err != nil || !ok {
			t.Fatalf("acquire the session's lease: %v %v", ok, err)
		}
		go func() {
			time.Sleep(300 * time.Millisecond) // the background release
			_ = l.Release(context.Background())
		}()
		if _, err := a.AppendUpload(ctx(t), "team/app", u.ID, 0, bytes.NewReader([]byte("chunk"))); err != nil {
			t.Fatalf("a chunk while the last one's lease is being released: %v", err)
		}
	})
}
