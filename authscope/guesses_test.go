package authscope

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// guessClock is a clock tests move by hand.
type guessClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *guessClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *guessClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestGuesses(l GuessLimits) (*Guesses, *guessClock) {
	g := NewGuesses(l)
	c := &guessClock{t: time.Unix(1_700_000_000, 0)}
	g.now = c.now
	return g, c
}

// fail makes one failed login and reports whether it was checked.
func (g *Guesses) fail(t *testing.T, client, account string) error {
	t.Helper()
	a, err := g.Begin(context.Background(), client, account)
	if err != nil {
		return err
	}
	a.End(false)
	return nil
}

// TestGuessesParallel: however many guesses arrive at once, only the
// client's bound of them is checked; the rest are refused unchecked,
// with a Retry-After.
func TestGuessesParallel(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: 10, PerAccount: -1})
	var checked, refused atomic.Int32
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := g.Begin(context.Background(), "192.0.2.7", fmt.Sprintf("user%d", i))
			var tm *ErrTooManyGuesses
			if errors.As(err, &tm) {
				if tm.RetryAfter < time.Second {
					t.Errorf("retry after %s", tm.RetryAfter)
				}
				refused.Add(1)
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			checked.Add(1)
			a.End(false)
		}()
	}
	wg.Wait()
	if checked.Load() != 10 || refused.Load() != 190 {
		t.Fatalf("%d checked, %d refused; want 10 and 190", checked.Load(), refused.Load())
	}
	// Another address is not affected.
	if err := g.fail(t, "192.0.2.8", "x"); err != nil {
		t.Fatalf("another client: %v", err)
	}
}

// TestGuessesGoodLoginsFree: good logins cost nothing, even many at once
// from one address (a CI farm behind NAT): checks in flight wait for a
// place rather than being refused.
func TestGuessesGoodLoginsFree(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: 3, PerAccount: 3})
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := g.Begin(context.Background(), "192.0.2.7", "ci")
			if err != nil {
				t.Error(err)
				return
			}
			a.End(true)
		}()
	}
	wg.Wait()
	for range 3 {
		if err := g.fail(t, "192.0.2.7", "ci"); err != nil {
			t.Fatalf("failure within the bound refused: %v", err)
		}
	}
	if err := g.fail(t, "192.0.2.7", "ci"); err == nil {
		t.Fatal("a failure past the bound was checked")
	}
}

// TestGuessesIPv6Prefix: addresses of one /64 are one client.
func TestGuessesIPv6Prefix(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: 4, PerAccount: -1})
	for i := range 4 {
		if err := g.fail(t, fmt.Sprintf("2001:db8:1:2::%x", i+1), ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.fail(t, "2001:db8:1:2:ffff::9", ""); err == nil {
		t.Fatal("a fifth address of the same /64 was checked")
	}
	if err := g.fail(t, "2001:db8:1:3::1", ""); err != nil {
		t.Fatalf("the next /64: %v", err)
	}
	if err := g.fail(t, "::ffff:192.0.2.1", ""); err != nil {
		t.Fatal(err)
	}
}

// TestGuessesAccount: an account's bound holds across addresses, except
// for an address that logged in to it before, so that a flood from
// elsewhere does not lock its owner out; and it recovers within the
// window.
func TestGuessesAccount(t *testing.T) {
	g, clock := newTestGuesses(GuessLimits{PerClient: 100, PerAccount: 5, Window: time.Minute})
	a, err := g.Begin(context.Background(), "198.51.100.1", "Alice")
	if err != nil {
		t.Fatal(err)
	}
	a.End(true) // alice's own machine
	for i := range 5 {
		if err := g.fail(t, fmt.Sprintf("192.0.2.%d", i+1), "alice"); err != nil {
			t.Fatal(err)
		}
	}
	var tm *ErrTooManyGuesses
	if err := g.fail(t, "192.0.2.99", "ALICE"); !errors.As(err, &tm) || !tm.Account {
		t.Fatalf("sixth guess at alice from a new address: %v", err)
	}
	if err := g.fail(t, "192.0.2.99", "bob"); err != nil {
		t.Fatalf("another account: %v", err)
	}
	if a, err := g.Begin(context.Background(), "198.51.100.1", "alice"); err != nil {
		t.Fatalf("alice from where she logged in before: %v", err)
	} else {
		a.End(true)
	}
	clock.add(12 * time.Second) // one failure decays
	if err := g.fail(t, "192.0.2.99", "alice"); err != nil {
		t.Fatalf("after a fifth of the window: %v", err)
	}
	if err := g.fail(t, "192.0.2.99", "alice"); err == nil {
		t.Fatal("the account's bound did not hold again")
	}
}

// TestGuessesFlood: a flood of distinct addresses and account names
// (each a key of the attacker's choosing) neither grows the tables nor
// frees a client that used up its bound.
func TestGuessesFlood(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: 3, PerAccount: 3})
	for range 3 {
		if err := g.fail(t, "203.0.113.5", "root"); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 100_000 {
		_ = g.fail(t, fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), fmt.Sprintf("u%d", i))
	}
	if len(g.clients) != guessTableSize || len(g.accounts) != guessTableSize || len(g.known) != guessTableSize {
		t.Fatal("tables grew")
	}
	if err := g.fail(t, "203.0.113.5", "someone"); err == nil {
		t.Fatal("the flood freed a client that had used up its bound")
	}
	if err := g.fail(t, "203.0.113.6", "root"); err == nil {
		t.Fatal("the flood freed an account that had used up its bound")
	}
}

// TestGuessesNil: without a limiter, nothing is bounded.
func TestGuessesNil(t *testing.T) {
	var g *Guesses
	a, err := g.Begin(context.Background(), "192.0.2.1", "x")
	if err != nil {
		t.Fatal(err)
	}
	a.End(false)
}
