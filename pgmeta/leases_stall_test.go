package pgmeta

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestLeaseAcquireDuringStall: Acquires sent while PostgreSQL is stopped
// (SIGSTOP) fail on the client when their timeout passes, but their
// INSERTs wait in the server's sockets and may run once it continues,
// after the client gave up. Each failed Acquire releases the row it may
// have taken (coord.Free); no key may be left held by a lease nobody
// knows of once the database is back. (Held in 4 runs: a drill that saw
// the "gc" lease held 36 s after such a stop, with no pass running,
// pointed here; see the mid-sweep stop drill in e2e.)
func TestLeaseAcquireDuringStall(t *testing.T) {
	srv := pgtest.Start(t)
	s, err := Open(context.Background(), Options{DSN: srv.NewDatabase(t), Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ls := s.Leases().(leases)
	const ttl = 20 * time.Second
	const n = 40
	if err := srv.Pause(); err != nil {
		t.Skip(err)
	}
	paused := true
	defer func() {
		if paused {
			_ = srv.Resume()
		}
	}()
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok, err := ls.Acquire(context.Background(), fmt.Sprintf("stall/%d", i), ttl); err == nil || ok {
				t.Errorf("Acquire %d with the database stopped: %v, %v", i, ok, err)
			}
		}()
	}
	wg.Wait()
	time.Sleep(2 * time.Second) // the releases' first tries fail too
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	paused = false
	time.Sleep(4 * time.Second)
	heldKeys := 0
	for i := range n {
		held, err := ls.held(context.Background(), fmt.Sprintf("stall/%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if held {
			heldKeys++
		}
	}
	if heldKeys > 0 {
		t.Errorf("%d of %d keys held 4 s after the database continued, by Acquires that failed during the stop", heldKeys, n)
	}
}
