package pgmeta

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestLeaseStaleWritesAfterStall: an Acquire or a Renew sent while
// PostgreSQL is stopped (SIGSTOP) fails on the client once its timeout
// passes, but its statement waits in the server's socket and runs when
// the server continues, after the holder gave the lease up (its deadline
// passed with no renewal answered, so a GC pass ended, and its release
// could not get through either). Such a late write must not take or
// extend the row: a key held again for a whole ttl from the moment the
// database came back, by a lease nobody knows of, holds off GC (or a
// fill, or a session's next chunk) on every replica. This was the e2e
// mid-sweep drill's "gc lease held 36 s after SIGCONT, no pass running".
func TestLeaseStaleWritesAfterStall(t *testing.T) {
	srv := pgtest.Start(t)
	const n = 6 // leases renewed and keys acquired during the stop, each
	dsn := srv.NewDatabase(t)
	s, err := Open(context.Background(), Options{
		DSN:     dsn + fmt.Sprintf("&pool_max_conns=%d", 4*n),
		Timeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ls := s.Leases().(leases)
	// The keys are read afterwards on a store of their own: the first
	// store's pool is busy reconnecting.
	check, err := Open(context.Background(), Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(check.Close)
	const ttl = 2 * time.Second
	var renewed []coord.Lease
	for i := range n {
		l, ok, err := ls.Acquire(context.Background(), fmt.Sprintf("renew/%d", i), ttl)
		if err != nil || !ok {
			t.Fatalf("Acquire: %v, %v", ok, err)
		}
		renewed = append(renewed, l)
	}
	// Idle connections enough for every write of the stop, used less
	// than a second ago (the pool hands them out without a ping), each
	// having run both statements before: pgx prepares a statement on a
	// connection the first time, and a statement it only asked the
	// stopped server to prepare never runs. On a replica that has run a
	// while, every pooled connection has them ready.
	var wg sync.WaitGroup
	for round := range 3 {
		for i := range 4 * n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, ok, err := ls.Acquire(context.Background(), fmt.Sprintf("warm/%d/%d", round, i), ttl)
				if err != nil || !ok {
					return // a slow machine: this connection is warmed less
				}
				time.Sleep(20 * time.Millisecond)
				_ = l.Renew(context.Background(), ttl)
				time.Sleep(20 * time.Millisecond)
				_ = l.Release(context.Background())
			}()
		}
		wg.Wait()
	}
	if err := srv.Pause(); err != nil {
		t.Skip(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = srv.Resume()
		}
	}()
	for i := range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			if err := renewed[i].Renew(context.Background(), ttl); err == nil {
				t.Errorf("Renew %d with the database stopped succeeded", i)
			}
		}()
		go func() {
			defer wg.Done()
			if _, ok, err := ls.Acquire(context.Background(), fmt.Sprintf("acquire/%d", i), ttl); err == nil || ok {
				t.Errorf("Acquire %d with the database stopped: %v, %v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	// Every deadline passes during the stop: the renewed leases' (their
	// holders give them up) and the failed Acquires' (their background
	// releases stop trying).
	time.Sleep(ttl + 500*time.Millisecond)
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	paused = false
	time.Sleep(time.Second)
	var heldKeys []string
	for i := range n {
		for _, key := range []string{fmt.Sprintf("renew/%d", i), fmt.Sprintf("acquire/%d", i)} {
			held, err := check.Leases().(leases).held(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
			if held {
				heldKeys = append(heldKeys, key)
			}
		}
	}
	if len(heldKeys) > 0 {
		t.Errorf("%d of %d keys held 1 s after the database continued, though every lease's deadline passed during the stop: %v", len(heldKeys), 2*n, heldKeys)
	}
}
