package pgmeta

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// limiters makes one authscope.Guesses per store, as each replica's
// auth layer does, all sharing the stores' database as their ledger.
func limiters(t *testing.T, stores []*Store, l authscope.GuessLimits) []*authscope.Guesses {
	t.Helper()
	gs := make([]*authscope.Guesses, len(stores))
	for i, s := range stores {
		gs[i] = authscope.NewGuesses(l)
		gs[i].Ledger = s
		gs[i].LedgerFailed = func(err error) { t.Errorf("replica %d: ledger: %v", i, err) }
	}
	return gs
}

// login runs one check of account from client on g that ends ok, or
// returns why it was refused unchecked.
func login(g *authscope.Guesses, client, account string, ok bool) error {
	a, err := g.Begin(context.Background(), client, account)
	if err != nil {
		return err
	}
	a.End(ok)
	return nil
}

// refusedBy says which bound refused err: "client", "account", or ""
// when err is no refusal.
func refusedBy(err error) string {
	var tm *authscope.ErrTooManyGuesses
	switch {
	case !errors.As(err, &tm):
		return ""
	case tm.Account:
		return "account"
	default:
		return "client"
	}
}

// TestLoginBoundsAcrossReplicas: failed logins spread over two replicas
// count against one bound, per client address and per account, and a
// good login on one replica exempts its address on the other.
func TestLoginBoundsAcrossReplicas(t *testing.T) {
	gs := limiters(t, replicas(t, 2), authscope.GuessLimits{PerClient: 4, PerAccount: 6, Window: time.Hour})

	// Two failures on each replica from one address: its bound is used
	// up on both, though each replica saw only half of them.
	for i := range 4 {
		if err := login(gs[i%2], "192.0.2.1", "alice", false); err != nil {
			t.Fatalf("failure %d: refused early: %v", i+1, err)
		}
	}
	for i, g := range gs {
		if err := login(g, "192.0.2.1", "alice", true); refusedBy(err) != "client" {
			t.Errorf("replica %d: fifth login from the address: %v, want the client bound", i, err)
		}
	}

	// The account bound: one failure each from six addresses, alternating
	// replicas; the seventh, from a new address, is refused on both.
	for i := range 6 {
		if err := login(gs[i%2], "198.51.100."+string(rune('1'+i)), "bob", false); err != nil {
			t.Fatalf("bob failure %d: %v", i+1, err)
		}
	}
	for i, g := range gs {
		if err := login(g, "203.0.113.9", "Bob", true); refusedBy(err) != "account" {
			t.Errorf("replica %d: a login to the guessed account: %v, want the account bound", i, err)
		}
	}

	// carol logged in from her address on replica 0; her account is then
	// flooded from elsewhere. On replica 1 her address is still let in.
	if err := login(gs[0], "192.0.2.50", "carol", true); err != nil {
		t.Fatal(err)
	}
	for i := range 6 {
		if err := login(gs[i%2], "198.51.100."+string(rune('a'+i)), "carol", false); err != nil {
			t.Fatalf("carol failure %d: %v", i+1, err)
		}
	}
	if err := login(gs[1], "203.0.113.10", "carol", true); refusedBy(err) != "account" {
		t.Errorf("a new address for the flooded account: %v, want the account bound", err)
	}
	// Replica 1 learns of carol's login within seconds (KnownPair's
	// poll), with no query per guess.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := login(gs[1], "192.0.2.50", "carol", true)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("carol's own address on the other replica: %v, want let in within seconds", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLoginLedgerDecays: the shared debt is forgotten gradually over the
// window, as the local one is.
func TestLoginLedgerDecays(t *testing.T) {
	// 2 per 2 s: one failure forgotten each second.
	gs := limiters(t, replicas(t, 2), authscope.GuessLimits{PerClient: 2, PerAccount: -1, Window: 2 * time.Second})
	for i := range 2 {
		if err := login(gs[i], "192.0.2.7", "dave", false); err != nil {
			t.Fatal(err)
		}
	}
	if err := login(gs[0], "192.0.2.7", "dave", false); refusedBy(err) != "client" {
		t.Fatalf("third failure at once: %v, want refused", err)
	}
	time.Sleep(1200 * time.Millisecond)
	if err := login(gs[0], "192.0.2.7", "dave", false); err != nil {
		t.Fatalf("after a second, one more: %v", err)
	}
	if err := login(gs[1], "192.0.2.7", "dave", false); refusedBy(err) != "client" {
		t.Fatalf("and no more: %v", err)
	}
}

// TestLoginLedgerHostileKeys: user names are the client's: any length and
// any bytes are counted, and stored as fixed-size HMACs.
func TestLoginLedgerHostileKeys(t *testing.T) {
	stores := replicas(t, 2)
	gs := limiters(t, stores, authscope.GuessLimits{PerClient: -1, PerAccount: 2, Window: time.Hour})
	name := strings.Repeat("x\x00\xff'); DROP TABLE login_failures; --", 2000)
	for i := range 2 {
		if err := login(gs[i], "192.0.2."+string(rune('1'+i)), name, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := login(gs[0], "192.0.2.9", name, true); refusedBy(err) != "account" {
		t.Fatalf("third guess at the hostile name: %v, want the account bound", err)
	}
	var n, bad int
	if err := stores[0].pool.QueryRow(context.Background(),
		"SELECT count(*), count(*) FILTER (WHERE length(key) <> 32) FROM login_failures").Scan(&n, &bad); err != nil {
		t.Fatal(err)
	}
	if n != 1 || bad != 0 {
		t.Fatalf("login_failures: %d rows, %d of another key size; want 1 row of a 32-byte key", n, bad)
	}
}

// TestLoginLedgerSweeps: failures that decayed to nothing and good logins
// too old to count are deleted, by the database's clock, so the table
// holds about one window of failures whatever names are tried.
func TestLoginLedgerSweeps(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	for _, k := range []string{"old", "new"} {
		if err := s.AddGuessFailure(ctx, k, 1); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"pair-old", "pair-new"} {
		if err := s.AddGoodLogin(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	// Age "old" by an hour (1 a second: long decayed) and "pair-old" past
	// what is kept, as if they had been written then.
	h, err := s.ledgerKeys(ctx, "old", "pair-old")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "UPDATE login_failures SET at = now() - interval '1 hour' WHERE key = $1", h[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(ctx, "UPDATE login_known SET at = now() - interval '32 days' WHERE key = $1", h[1]); err != nil {
		t.Fatal(err)
	}
	debts, _, err := s.LoadGuesses(ctx, []string{"old", "new"}, "", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if debts[0] != 0 || debts[1] < 0.9 {
		t.Fatalf("debts before the sweep: old %v (want decayed to 0), new %v (want about 1)", debts[0], debts[1])
	}
	s.sweepGuesses()
	var failures, known int
	if err := s.pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM login_failures), (SELECT count(*) FROM login_known)").Scan(&failures, &known); err != nil {
		t.Fatal(err)
	}
	if failures != 1 || known != 1 {
		t.Fatalf("after a sweep: %d failures and %d good logins kept, want the recent one of each", failures, known)
	}
}

// TestLoginLedgerDown: with PostgreSQL down a login is still checked,
// bounded by the replica's own count, without waiting on the database;
// once it is back the replicas share their counts again.
func TestLoginLedgerDown(t *testing.T) {
	srv := pgtest.Start(t)
	dsn := srv.NewDatabase(t)
	stores := []*Store{openDSN(t, dsn), openDSN(t, dsn)}
	gs := limiters(t, stores, authscope.GuessLimits{PerClient: 3, PerAccount: -1, Window: time.Hour})
	var failures atomic.Int32
	counted := make([]*countingLedger, len(gs))
	for i, g := range gs {
		g.LedgerFailed = func(error) { failures.Add(1) }
		counted[i] = &countingLedger{GuessLedger: stores[i]}
		g.Ledger = counted[i]
	}
	// The ledger's secret is read once; make sure both have it, so what
	// is tested below is the ledger's own queries failing.
	for _, g := range gs {
		if err := login(g, "192.0.2.200", "warm", true); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range 3 {
		if err := login(gs[0], "192.0.2.1", "erin", false); err != nil {
			t.Fatalf("failure %d with the database down: %v", i+1, err)
		}
	}
	if err := login(gs[0], "192.0.2.1", "erin", false); refusedBy(err) != "client" {
		t.Fatalf("fourth failure on one replica, database down: %v, want its own bound", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("four logins with the database down took %s", took)
	}
	if failures.Load() == 0 {
		t.Error("LedgerFailed was never told")
	}

	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// Back once a login on each replica reads the ledger again (after
	// its rest; each try from an address of its own: they count).
	deadline := time.Now().Add(30 * time.Second)
	for r, g := range gs {
		for i := 0; ; i++ {
			failures.Store(0)
			before := counted[r].loads.Load()
			err := login(g, fmt.Sprintf("198.51.%d.%d", 100+r, i%250), "erin", false)
			if err == nil && counted[r].loads.Load() > before && failures.Load() == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("replica %d: the ledger is not used again after PostgreSQL came back: %v", r, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	// Three failures from a new address over both replicas use up its
	// bound of 3 on both.
	for i := range 3 {
		if err := login(gs[i%2], "192.0.2.2", "erin", false); err != nil {
			t.Fatal(err)
		}
	}
	if err := login(gs[1], "192.0.2.2", "erin", true); refusedBy(err) != "client" {
		t.Fatalf("after PostgreSQL came back: %v, want the shared bound", err)
	}
}

// TestLoginFloodSparesTheDatabase: once a replica's own count refuses an
// address, its further guesses (at any account) are refused without a
// read of the ledger: a flood costs the database nothing.
func TestLoginFloodSparesTheDatabase(t *testing.T) {
	l := &countingLedger{GuessLedger: openStore(t)}
	g := authscope.NewGuesses(authscope.GuessLimits{PerClient: 3, PerAccount: -1, Window: time.Hour})
	g.Ledger = l
	for range 3 {
		if err := login(g, "192.0.2.1", "mallory", false); err != nil {
			t.Fatal(err)
		}
	}
	before := l.loads.Load()
	for i := range 100 {
		if err := login(g, "192.0.2.1", fmt.Sprintf("user%d", i), false); refusedBy(err) != "client" {
			t.Fatalf("guess %d past the bound: %v", i, err)
		}
	}
	if n := l.loads.Load() - before; n != 0 {
		t.Fatalf("100 guesses past the bound read the ledger %d times, want 0", n)
	}
}

// TestLoginLockedAccountSparesTheDatabase: guesses at an account the
// replica's own count locked are refused without a read, from however
// many addresses (an IPv6 /48 holds 65,536 /64s).
func TestLoginLockedAccountSparesTheDatabase(t *testing.T) {
	l := &countingLedger{GuessLedger: openStore(t)}
	g := authscope.NewGuesses(authscope.GuessLimits{PerClient: 10, PerAccount: 2, Window: time.Hour})
	g.Ledger = l
	for i := range 2 {
		if err := login(g, fmt.Sprintf("192.0.2.%d", i+1), "victim", false); err != nil {
			t.Fatal(err)
		}
	}
	before := l.loads.Load()
	for i := range 100 {
		if err := login(g, fmt.Sprintf("2001:db8:0:%x::1", i), "victim", false); refusedBy(err) != "account" {
			t.Fatalf("guess %d at the locked account: %v", i, err)
		}
	}
	if n := l.loads.Load() - before; n != 0 {
		t.Fatalf("100 guesses at a locked account from 100 /64s read the ledger %d times, want 0", n)
	}
}

// countingLedger counts the reads of a real ledger.
type countingLedger struct {
	authscope.GuessLedger
	loads atomic.Int32
}

func (c *countingLedger) LoadGuesses(ctx context.Context, keys []string, pair string, knownFor time.Duration) ([]float64, bool, error) {
	c.loads.Add(1)
	return c.GuessLedger.LoadGuesses(ctx, keys, pair, knownFor)
}

// TestLoginFloodSparesKnownPair: behind a NAT address that an attacker
// floods past its bound, a user who logged in from it on another replica
// is let in on this one too (within seconds), while the flood reads the
// ledger not once.
func TestLoginFloodSparesKnownPair(t *testing.T) {
	stores := replicas(t, 2)
	gs := limiters(t, stores, authscope.GuessLimits{PerClient: 3, PerAccount: -1, Window: time.Hour})
	l := &countingLedger{GuessLedger: stores[1]}
	gs[1].Ledger = l
	if err := login(gs[0], "192.0.2.50", "carol", true); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		err := login(gs[1], "192.0.2.50", fmt.Sprintf("guess%d", i), false)
		if i == 3 && refusedBy(err) != "client" {
			t.Fatalf("fourth guess from the NAT address: %v, want refused", err)
		}
	}
	before := l.loads.Load()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		// The flood goes on meanwhile.
		if err := login(gs[1], "192.0.2.50", fmt.Sprintf("more%d", i), false); refusedBy(err) != "client" {
			t.Fatalf("flood guess %d: %v, want refused", i, err)
		}
		if login(gs[1], "192.0.2.50", "carol", true) == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("carol, who logged in from the NAT address on replica 0, is still refused on replica 1 during the flood")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := l.loads.Load() - before; n > 1 {
		t.Fatalf("the flood and carol's tries read the ledger %d times, want at most carol's one", n)
	}
}

// TestLoginLedgerPollPastFullSecond: more good logins than one poll reads
// (knownPollRows) all recorded in the same second must not hide the ones
// after them. A poll that re-read its last second from the start read
// the same full page each time and never got past it.
func TestLoginLedgerPollPastFullSecond(t *testing.T) {
	stores := replicas(t, 2)
	ctx := context.Background()
	// One statement: every row gets the same now().
	if _, err := stores[0].pool.Exec(ctx, `INSERT INTO login_known (key, at)
SELECT sha256(convert_to('flood' || i, 'UTF8')), now() FROM generate_series(1, $1) AS i`, knownPollRows+knownPollRows/2); err != nil {
		t.Fatal(err)
	}
	if err := stores[0].AddGoodLogin(ctx, "carol@192.0.2.60"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * knownPollEvery)
	for !stores[1].KnownPair("carol@192.0.2.60", time.Hour) {
		if time.Now().After(deadline) {
			t.Fatalf("carol's login, recorded after %d others in one second, is still unknown on the other replica after %v",
				knownPollRows+knownPollRows/2, 10*knownPollEvery)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLoginLedgerCopyForgetsOldestFirst: past knownMax good logins, the
// copy KnownPair reads forgets the oldest, never a login of a minute ago.
// A copy that forgot an arbitrary half forgot about half of the recent
// ones too: those users were then refused during a flood on that replica.
func TestLoginLedgerCopyForgetsOldestFirst(t *testing.T) {
	stores := replicas(t, 2)
	ctx := context.Background()
	// Older than what the auth layer asks about (an hour here), not old
	// enough to be forgotten on age alone.
	if _, err := stores[0].pool.Exec(ctx, `INSERT INTO login_known (key, at)
SELECT sha256(convert_to('old' || i, 'UTF8')), now() - interval '10 days' FROM generate_series(1, $1) AS i`, knownMax); err != nil {
		t.Fatal(err)
	}
	const recent = 100
	for i := range recent {
		if err := stores[0].AddGoodLogin(ctx, fmt.Sprintf("user%d@192.0.2.70", i)); err != nil {
			t.Fatal(err)
		}
	}
	var newest time.Time
	if err := stores[0].pool.QueryRow(ctx, "SELECT max(at) FROM login_known").Scan(&newest); err != nil {
		t.Fatal(err)
	}
	// Until replica 1's copy has read the whole table.
	g := &stores[1].guesses
	deadline := time.Now().Add(60 * time.Second)
	for {
		stores[1].KnownPair("nobody@192.0.2.70", time.Hour) // starts the polls
		g.mu.Lock()
		done := g.knownAfter == nil && !g.knownUpTo.Before(newest)
		g.mu.Unlock()
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("replica 1 did not read the whole ledger within 60 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	g.mu.Lock()
	kept := len(g.known)
	g.mu.Unlock()
	if kept > knownMax {
		t.Fatalf("the copy holds %d logins, bound %d", kept, knownMax)
	}
	forgotten := 0
	for i := range recent {
		if !stores[1].KnownPair(fmt.Sprintf("user%d@192.0.2.70", i), time.Hour) {
			forgotten++
		}
	}
	if forgotten > 0 {
		t.Fatalf("%d of %d logins of the last minute forgotten by the copy (%d kept), while %d ten days old were there to forget",
			forgotten, recent, kept, knownMax)
	}
}
