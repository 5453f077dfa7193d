package authscope

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
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

// TestGuessesKnownPairApart: behind one shared address, a job that keeps
// sending a stale password uses up the address's failures for logins
// never seen from there, but not those of a user who logged in from it
// before; that user's own failures there are bounded as a client's.
func TestGuessesKnownPairApart(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: 5, PerAccount: 50})
	const nat = "203.0.113.9"
	a, err := g.Begin(context.Background(), nat, "alice")
	if err != nil {
		t.Fatal(err)
	}
	a.End(true)
	for range 5 {
		if err := g.fail(t, nat, "stale-job"); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.fail(t, nat, "carol"); err == nil {
		t.Fatal("a login never seen from the address was checked past its bound")
	}
	a, err = g.Begin(context.Background(), nat, "alice")
	if err != nil {
		t.Fatalf("alice, known at the address, was refused for another's failures: %v", err)
	}
	a.End(true)
	for range 5 {
		if err := g.fail(t, nat, "ALICE"); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.fail(t, nat, "alice"); err == nil {
		t.Fatal("guesses at alice from her own address are unbounded")
	}
}

// TestGuessesAPIKeys: API keys sent as the Basic password are bounded as
// passwords are; the 429 comes without the key being looked up.
func TestGuessesAPIKeys(t *testing.T) {
	_, good, az := keyAuthorizer(t, NewGuesses(GuessLimits{PerClient: 5}))
	try := func(addr, key string) int { return pullStatus(t, az, addr, key) }
	if st := try("198.51.100.1", good); st != http.StatusOK {
		t.Fatalf("good key: %d", st)
	}
	wrong := good[:len(good)-4] + "AAAA"
	got := map[int]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 15 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st := try("192.0.2.1", wrong)
			mu.Lock()
			got[st]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if got[http.StatusUnauthorized] != 5 || got[http.StatusTooManyRequests] != 10 {
		t.Fatalf("15 wrong keys at once: %v; want 5 checked, 10 refused unchecked", got)
	}
	if st := try("198.51.100.1", good); st != http.StatusOK {
		t.Fatalf("the good key from where it is used: %d", st)
	}
}

// TestGuessesAPIKeyNotLockedOut: an API key's secret is 256 random bits,
// which no number of guesses finds, so failures sent with a key's id
// (which is no secret: it leads the key, and shows in logs and lists)
// are bounded per client only. Before, they were charged to the id as an
// account: anyone who learnt it locked the key out, with a few dozen
// wrong secrets a minute, of every address it had not worked from
// before (every fresh CI runner).
func TestGuessesAPIKeyNotLockedOut(t *testing.T) {
	_, good, az := keyAuthorizer(t, NewGuesses(GuessLimits{PerClient: 3, PerAccount: 5}))
	try := func(addr, key string) int { return pullStatus(t, az, addr, key) }
	wrong := good[:len(good)-4] + "AAAA"
	for i := range 20 {
		if st := try(fmt.Sprintf("192.0.2.%d", i/3+1), wrong); st != http.StatusUnauthorized {
			t.Fatalf("wrong secret %d: %d, want 401", i, st)
		}
	}
	if st := try("192.0.2.1", wrong); st != http.StatusTooManyRequests {
		t.Fatalf("a client past its bound: %d, want 429", st)
	}
	if st := try("198.51.100.7", good); st != http.StatusOK {
		t.Fatalf("the good key from a new address after guesses at its id: %d, want 200", st)
	}
}

// TestRetryAfter: whole seconds, rounded up.
func TestRetryAfter(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Second: "1", 1500 * time.Millisecond: "2", 59*time.Second + time.Nanosecond: "60"} {
		if got := RetryAfter(d); got != want {
			t.Errorf("RetryAfter(%v) = %s, want %s", d, got, want)
		}
	}
}

// TestGuessesGoodAPIKeyNotQueued: a key that verified a moment ago is no
// guess: checks of it are not charged, so a CI job sending many requests
// at once with its key does not queue behind the address's checks in
// flight (every request carries the key: there is no session), nor get a
// 429 when they last. The key is still verified each time (a revoked key
// fails at once). Before, with the address's checks in flight at its
// bound, the good key waited for one of them to end.
func TestGuessesGoodAPIKeyNotQueued(t *testing.T) {
	g := NewGuesses(GuessLimits{PerClient: 1})
	keys, good, az := keyAuthorizer(t, g)
	pull := Need{Scopes: []Scope{RepositoryScope("app", ScopePull)}}
	try := func(key string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r := httptest.NewRequest(http.MethodGet, "/v2/app/tags/list", nil).WithContext(ctx)
		r.RemoteAddr = "192.0.2.40:1234"
		r.SetBasicAuth("ci", key)
		_, err := az.Authorize(r, pull)
		return err
	}
	if err := try(good); err != nil {
		t.Fatal(err)
	}
	// A check of the key in flight from the address (another of the
	// job's requests) fills its bound there.
	id := good[len(APIKeyPrefix) : len(APIKeyPrefix)+16]
	busy, err := g.Begin(context.Background(), "192.0.2.40", "apikey:"+id)
	if err != nil {
		t.Fatal(err)
	}
	defer busy.End(true)
	if err := try(good); err != nil {
		t.Fatalf("the key that verified a moment ago, while the address has a check in flight: %v", err)
	}
	if err := keys.Revoke("ci", id); err != nil {
		t.Fatal(err)
	}
	var d *Denial
	if err := try(good); !errors.As(err, &d) || d.Status != http.StatusUnauthorized {
		t.Fatalf("the key once revoked: %v, want 401", err)
	}
}

// keyAuthorizer is an authorizer that lets every holder of an API key
// pull, with guesses counted by g, and the key it made for user ci.
func keyAuthorizer(t *testing.T, g *Guesses) (*APIKeys, string, *Authorizer) {
	t.Helper()
	keys := &APIKeys{Store: newMemKeys()}
	good, _, err := keys.Create("ci", nil, "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(PolicyConfig{ExternalGroups: true, Repositories: map[string]RepositoryPolicy{"**": {Default: []string{ActionRead}}}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := NewAuthorizer(Options{Policy: p, APIKeys: keys, Guesses: g})
	if err != nil {
		t.Fatal(err)
	}
	return keys, good, az
}

// pullStatus is the status az gives a pull from addr with Basic ci:key.
func pullStatus(t *testing.T, az *Authorizer, addr, key string) int {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/v2/app/tags/list", nil)
	r.RemoteAddr = addr + ":1234"
	r.SetBasicAuth("ci", key)
	_, err := az.Authorize(r, Need{Scopes: []Scope{RepositoryScope("app", ScopePull)}})
	var d *Denial
	if errors.As(err, &d) {
		return d.Status
	}
	if err != nil {
		t.Fatal(err)
	}
	return http.StatusOK
}

// TestGuessesKnownPairNotHeldByFlood: each check in flight holds its
// client's entry (its count of checks in flight must survive), so a flood
// from more new addresses than the table holds, whose checks wait long
// for their turn (TurnWait), held every entry. A known pair's bucket was
// in the same table: its entry, idle, went to a flood address, and its
// login then waited for a free one, up to guessWaitMax, before its own
// turn of the directory or of bcrypt (Turns' known lane) could help.
// Measured with LDAP (TestKnownAddressNotStarved): 8.8 to 18.9 s. A known
// pair's bucket lives in a table of its own, which only good logins fill.
func TestGuessesKnownPairNotHeldByFlood(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: -1, PerAccount: -1})
	a, err := g.Begin(context.Background(), "10.0.0.1", "alice")
	if err != nil {
		t.Fatal(err)
	}
	a.End(true)
	done, cancel := context.WithCancel(context.Background())
	cancel() // a flood check that finds no free entry gives up at once
	var held []*GuessAttempt
	for i := range 5 * guessTableSize {
		if f, err := g.Begin(done, fmt.Sprintf("10.%d.%d.%d", 1+i>>16&255, i>>8&255, i&255), fmt.Sprintf("nobody%d", i)); err == nil {
			held = append(held, f)
		}
	}
	t.Logf("%d flood checks in flight", len(held))
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Second)
	defer stop()
	start := time.Now()
	a, err = g.Begin(ctx, "10.0.0.1", "alice")
	if err != nil || !a.Known() {
		t.Fatalf("alice from her known address, with %d flood checks in flight: %v after %s (known: %v), want her check begun at once",
			len(held), err, time.Since(start).Round(time.Millisecond), a.Known())
	}
	a.End(true)
	for _, f := range held {
		f.End(false)
	}
}

// TestGuessesTableWhole: every entry of a table is used. Keys are odd
// (0 marks a free entry) and picked their set by the key modulo the
// number of sets, a power of two: only the odd sets were ever used, and
// a table held half its entries (4,096 of 8,192 checks in flight, and
// as many addresses remembered), so floods pushed out twice as early.
func TestGuessesTableWhole(t *testing.T) {
	g, _ := newTestGuesses(GuessLimits{PerClient: -1, PerAccount: -1})
	done, cancel := context.WithCancel(context.Background())
	cancel() // a check that finds no free entry gives up at once
	held := 0
	for i := range 5 * guessTableSize {
		if a, err := g.Begin(done, fmt.Sprintf("10.%d.%d.%d", 1+i>>16&255, i>>8&255, i&255), ""); err == nil {
			defer a.End(true)
			held++
		}
	}
	if held != guessTableSize {
		t.Fatalf("%d checks of distinct addresses in flight at once, want the table's %d", held, guessTableSize)
	}
}
