package pgmeta

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/coord/coordtest"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestLeases runs the lease contract with each instance its own Store
// (its own pool) on one database, as replicas are.
func TestLeases(t *testing.T) {
	coordtest.Run(t, func(t *testing.T) func() coord.Leases {
		dsn := pgtest.NewDatabase(t)
		return func() coord.Leases {
			s, err := Open(context.Background(), Options{DSN: dsn})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(s.Close)
			return s.Leases()
		}
	})
}

// TestLeaseHolderLosesDatabase: a replica holding a lease (Hold) whose
// database goes away stops its work (held ends) by the lease's deadline,
// before another replica could take the key; lease calls fail with
// ErrUnavailable within the timeout; once the database is back a new
// Hold succeeds without reopening anything.
func TestLeaseHolderLosesDatabase(t *testing.T) {
	srv := pgtest.Start(t)
	const timeout = time.Second
	s, err := Open(context.Background(), Options{DSN: srv.NewDatabase(t), Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	const ttl = 2 * time.Second
	held, release, ok, err := coord.Hold(context.Background(), s.Leases(), "gc", ttl)
	if err != nil || !ok {
		t.Fatalf("Hold: %v, %v", ok, err)
	}
	defer release()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Start() })
	killed := time.Now()
	select {
	case <-held.Done():
		if !errors.Is(context.Cause(held), coord.ErrExpired) {
			t.Errorf("held ended with %v, want ErrExpired", context.Cause(held))
		}
		if took := time.Since(killed); took > ttl {
			t.Errorf("held ended %v after the database died, lease ttl %v: past its deadline", took, ttl)
		}
	case <-time.After(ttl + 2*time.Second):
		t.Fatal("held still alive well past the lease's deadline with the database gone")
	}
	start := time.Now()
	if _, _, err := s.Leases().Acquire(context.Background(), "other", ttl); !errors.Is(err, ErrUnavailable) {
		t.Errorf("Acquire with the database down: %v, want ErrUnavailable", err)
	}
	if took := time.Since(start); took > timeout+time.Second {
		t.Errorf("Acquire took %v to fail, timeout %v", took, timeout)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The dead holder's row expired meanwhile: the key is free again.
	_, release2, ok, err := coord.Hold(context.Background(), s.Leases(), "gc", ttl)
	if err != nil || !ok {
		t.Fatalf("Hold once the database is back: %v, %v", ok, err)
	}
	release2()
}

// TestLeaseAcquireAnswerLost: an Acquire whose INSERT committed but whose
// answer was lost (the connection cut after the statement went out)
// failed, and the row it had taken stayed for the whole ttl with no one
// to renew or release it: every replica waiting on the key (a fill's
// followers, a session's next chunk, the next GC) waited out the ttl.
// Seen in e2e TestReplicaNetworkCuts as a cold mirror GET answered 503
// after 30 s (a fill lease). The failed Acquire now releases the row it
// may hold, so the key is free again in moments.
func TestLeaseAcquireAnswerLost(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	p, proxied := throughProxy(t, dsn, true) // the warmed connection is the one muted
	a, err := Open(context.Background(), Options{DSN: proxied, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b, err := Open(context.Background(), Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	const ttl = 30 * time.Second
	// Prepares the statement on a's connection: the next Acquire sends
	// only its execution, which the server runs whatever becomes of the
	// answer.
	warm, ok, err := a.Leases().Acquire(context.Background(), "warm", ttl)
	if err != nil || !ok {
		t.Fatalf("Acquire: %v, %v", ok, err)
	}
	if err := warm.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.mute.Store(true)
	_, _, err = a.Leases().Acquire(context.Background(), "fill/x", ttl)
	p.mute.Store(false)
	p.reset()
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Acquire with its answer lost: %v, want ErrUnavailable", err)
	}
	start := time.Now()
	for {
		l, ok, err := b.Leases().Acquire(context.Background(), "fill/x", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			_ = l.Release(context.Background())
			t.Logf("key free %s after the failed Acquire", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("key still held %s after an Acquire that failed (lease ttl %s): a lease no one holds", time.Since(start).Round(time.Millisecond), ttl)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLeaseFailedAcquireReleaseStopsAtClose: the release a failed Acquire
// starts in the background (TestLeaseAcquireAnswerLost) retried until the
// lease's ttl ran out, even after the store was closed, where no retry
// can work: a goroutine per failed Acquire, polling a closed pool every
// 2 s for the ttl (a pass's record is kept for the scrub interval, a
// week). It now ends when the store closes.
func TestLeaseFailedAcquireReleaseStopsAtClose(t *testing.T) {
	srv := pgtest.Start(t)
	p, proxied := throughProxy(t, srv.NewDatabase(t), true)
	a, err := Open(context.Background(), Options{DSN: proxied, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	warm, ok, err := a.Leases().Acquire(context.Background(), "warm", time.Minute)
	if err != nil || !ok {
		t.Fatalf("Acquire: %v, %v", ok, err)
	}
	if err := warm.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.mute.Store(true)
	// The database becomes unreachable: the release cannot get through.
	p.ln.Close()
	if _, _, err := a.Leases().Acquire(context.Background(), "scrub/done", time.Hour); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Acquire with its answer lost: %v, want ErrUnavailable", err)
	}
	p.reset()
	a.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "coord.Free") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failed Acquire's release still retries 5 s after the store closed:\n%s", stacks)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
