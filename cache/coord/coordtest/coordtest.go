// Package coordtest is the contract every coord.Leases backend keeps: one
// suite, run against the in-process leases and PostgreSQL's.
package coordtest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/coord"
)

// Run runs the contract. open returns a function that makes instances of
// one shared backend (for a database: a new connection each; in-process:
// the same leases), as replicas would see it. Each test gets its own
// backend.
func Run(t *testing.T, open func(t *testing.T) (instance func() coord.Leases)) {
	t.Run("Exclusive", func(t *testing.T) { exclusive(t, open(t)) })
	t.Run("ReleaseFrees", func(t *testing.T) { releaseFrees(t, open(t)) })
	t.Run("ExpiryFrees", func(t *testing.T) { expiryFrees(t, open(t)) })
	t.Run("RenewKeeps", func(t *testing.T) { renewKeeps(t, open(t)) })
	t.Run("Wait", func(t *testing.T) { wait(t, open(t)) })
	t.Run("OneWinner", func(t *testing.T) { oneWinner(t, open(t)) })
	t.Run("Hold", func(t *testing.T) { hold(t, open(t)) })
	t.Run("BadInput", func(t *testing.T) { badInput(t, open(t)) })
}

// ttl is short enough for tests to see expiry and long enough for a
// database round trip on a loaded machine.
const ttl = 700 * time.Millisecond

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

func mustAcquire(t *testing.T, ls coord.Leases, key string, ttl time.Duration) coord.Lease {
	t.Helper()
	l, ok, err := ls.Acquire(ctx(t), key, ttl)
	if err != nil || !ok {
		t.Fatalf("Acquire(%q) = %v, %v; want the lease", key, ok, err)
	}
	return l
}

func taken(t *testing.T, ls coord.Leases, key string) bool {
	t.Helper()
	l, ok, err := ls.Acquire(ctx(t), key, ttl)
	if err != nil {
		t.Fatalf("Acquire(%q): %v", key, err)
	}
	if ok {
		_ = l.Release(ctx(t))
	}
	return !ok
}

func exclusive(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	before := time.Now()
	l := mustAcquire(t, a, "fill/sha256:abc", ttl)
	after := time.Now()
	if l.Key() != "fill/sha256:abc" {
		t.Errorf("Key() = %q", l.Key())
	}
	if d := l.Deadline(); !d.After(before) || d.After(after.Add(ttl)) {
		t.Errorf("Deadline %v not within (%v, %v]", d, before, after.Add(ttl))
	}
	if !taken(t, b, "fill/sha256:abc") || !taken(t, a, "fill/sha256:abc") {
		t.Error("a held lease was handed out again")
	}
	if taken(t, b, "fill/sha256:abd") {
		t.Error("another key is taken too")
	}
}

func releaseFrees(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	l := mustAcquire(t, a, "gc", ttl*10)
	if err := l.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	l2 := mustAcquire(t, b, "gc", ttl*10)
	// A second release of the first lease frees nobody else's.
	if err := l.Release(ctx(t)); err != nil {
		t.Errorf("second Release: %v", err)
	}
	if !taken(t, a, "gc") {
		t.Error("releasing a released lease freed its key's new holder")
	}
	if err := l.Renew(ctx(t), ttl); !errors.Is(err, coord.ErrLost) {
		t.Errorf("Renew of a released lease: %v, want ErrLost", err)
	}
	if err := l2.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
}

func expiryFrees(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	old := mustAcquire(t, a, "k", ttl)
	time.Sleep(time.Until(old.Deadline()) + 100*time.Millisecond)
	l := mustAcquire(t, b, "k", ttl*10) // a died without a word
	if err := old.Renew(ctx(t), ttl); !errors.Is(err, coord.ErrLost) {
		t.Errorf("Renew after another took over: %v, want ErrLost", err)
	}
	if err := old.Release(ctx(t)); err != nil {
		t.Errorf("Release of a lost lease: %v", err)
	}
	if !taken(t, a, "k") {
		t.Error("the dead holder's Release freed the new holder's lease")
	}
	_ = l.Release(ctx(t))
}

func renewKeeps(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	l := mustAcquire(t, a, "k", ttl)
	end := time.Now().Add(3 * ttl)
	for time.Now().Before(end) {
		time.Sleep(ttl / 4)
		before := time.Now()
		if err := l.Renew(ctx(t), ttl); err != nil {
			t.Fatalf("Renew: %v", err)
		}
		after := time.Now()
		if d := l.Deadline(); !d.After(before.Add(ttl/2)) || d.After(after.Add(ttl)) {
			t.Fatalf("Deadline after Renew %v not within (%v, %v]", d, before.Add(ttl/2), after.Add(ttl))
		}
		if !taken(t, b, "k") {
			t.Fatal("a renewed lease was handed out")
		}
	}
	_ = l.Release(ctx(t))
}

func wait(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	if err := b.Wait(ctx(t), "free"); err != nil {
		t.Errorf("Wait on a free key: %v", err)
	}

	// Released: the waiter wakes well before the lease would expire.
	l := mustAcquire(t, a, "k", time.Minute)
	woke := make(chan error, 1)
	go func() { woke <- b.Wait(ctx(t), "k") }()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-woke:
		t.Fatalf("Wait returned (%v) while the lease is held", err)
	default:
	}
	_ = l.Release(ctx(t))
	select {
	case err := <-woke:
		if err != nil {
			t.Errorf("Wait after release: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return within 5 s of the release")
	}

	// Expired: the waiter wakes once the holder's deadline passes.
	l = mustAcquire(t, a, "k", ttl)
	start := time.Now()
	if err := b.Wait(ctx(t), "k"); err != nil {
		t.Errorf("Wait for an expiring lease: %v", err)
	}
	if took := time.Since(start); took > ttl+5*time.Second {
		t.Errorf("Wait for an expiring lease took %v", took)
	}
	if !time.Now().After(l.Deadline()) {
		t.Error("Wait returned before the lease expired")
	}

	// Held throughout: ctx's error.
	l = mustAcquire(t, a, "k", time.Minute)
	c, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := b.Wait(c, "k"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait while held, until ctx ends: %v", err)
	}
	_ = l.Release(ctx(t))
}

func oneWinner(t *testing.T, instance func() coord.Leases) {
	const n = 8
	ins := make([]coord.Leases, n)
	for i := range ins {
		ins[i] = instance()
	}
	for round := range 5 {
		key := "race/" + strings.Repeat("x", round+1)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []coord.Lease
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				l, ok, err := ins[i].Acquire(ctx(t), key, time.Minute)
				if err != nil {
					t.Errorf("Acquire: %v", err)
					return
				}
				if ok {
					mu.Lock()
					won = append(won, l)
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, len(won))
		}
		_ = won[0].Release(ctx(t))
	}
}

func hold(t *testing.T, instance func() coord.Leases) {
	a, b := instance(), instance()
	held, release, ok, err := coord.Hold(ctx(t), a, "gc", ttl)
	if err != nil || !ok {
		t.Fatalf("Hold: %v, %v", ok, err)
	}
	if _, _, ok, err := coord.Hold(ctx(t), b, "gc", ttl); ok || err != nil {
		t.Fatalf("second Hold: %v, %v; want not ok", ok, err)
	}
	// Kept across several ttls by its renewals.
	time.Sleep(3 * ttl)
	if held.Err() != nil {
		t.Fatalf("held ended (%v) while renewed", context.Cause(held))
	}
	if !taken(t, b, "gc") {
		t.Fatal("a held lease was handed out")
	}
	release()
	release() // twice is harmless
	if held.Err() == nil {
		t.Error("held still alive after release")
	}
	if taken(t, b, "gc") {
		t.Error("release did not free the key")
	}
}

func badInput(t *testing.T, instance func() coord.Leases) {
	a := instance()
	for _, key := range []string{"", "a\x00b", "new\nline", strings.Repeat("k", coord.MaxKey+1)} {
		if _, ok, err := a.Acquire(ctx(t), key, ttl); err == nil || ok {
			t.Errorf("Acquire(%q) = %v, %v; want an error", key, ok, err)
		}
	}
	for _, d := range []time.Duration{0, -time.Second} {
		if _, ok, err := a.Acquire(ctx(t), "k", d); err == nil || ok {
			t.Errorf("Acquire with ttl %v = %v, %v; want an error", d, ok, err)
		}
	}
	// Unicode and long-but-allowed keys are keys like any other.
	for _, key := range []string{"fill/ünïcode/😀", strings.Repeat("k", coord.MaxKey)} {
		l := mustAcquire(t, a, key, ttl)
		if l.Key() != key {
			t.Errorf("Key() = %q, want %q", l.Key(), key)
		}
		if !taken(t, instance(), key) {
			t.Errorf("%q not exclusive", key)
		}
		_ = l.Release(ctx(t))
	}
}
