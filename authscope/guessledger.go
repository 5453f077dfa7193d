package authscope

import (
	"context"
	"errors"
	"time"
)

// Replicas of one registry share their failed logins through a
// GuessLedger (a table of the metadata database): each process still
// charges and bounds checks in its own tables, as Guesses does alone, but
// before a check it raises its counts to what the ledger holds, and
// after one it records the outcome there. A client that spreads its
// guesses over N replicas then meets the bound about once, not N times.
//
// What the ledger does not share: checks in flight (each replica charges
// them in its own tables, and the ledger learns of a failure when it
// ends), so a burst that starts the bound's worth of checks on every
// replica at once still gets them all; the rate over a window is bounded.
//
// The ledger is read only by a check this process's own counts let
// through (which excludes logins remembered from a recent good one): a
// flood, once each replica's counts refuse it, costs the database
// nothing. Every outcome is written, read or not.

// GuessLedger records failed and good logins for several processes. Keys
// are opaque strings of any length, chosen partly by clients (user
// names, addresses): an implementation stores them hashed. Times are the
// ledger's own (one clock for every process). Each call is bounded by
// its context.
type GuessLedger interface {
	// LoadGuesses returns the failures recorded under each of keys, in
	// order, decayed to now at the rate they were recorded with (0 for
	// a key with none), and whether pair logged in well within
	// knownFor.
	LoadGuesses(ctx context.Context, keys []string, pair string, knownFor time.Duration) ([]float64, bool, error)
	// KnownPair reports, without waiting on anything, whether pair
	// logged in well within knownFor as far as this process has learnt
	// from the ledger (within seconds of the login, on any process). A
	// check its own counts refuse asks this instead of LoadGuesses, so
	// that a pair exempt from a bound is let in even during a flood
	// that, asking the ledger each time, would be a flood of queries.
	KnownPair(pair string, knownFor time.Duration) bool
	// AddGuessFailure adds one failure to key's debt, after letting what
	// was recorded decay at perSecond since it was recorded.
	AddGuessFailure(ctx context.Context, key string, perSecond float64) error
	// AddGoodLogin records that pair logged in now.
	AddGoodLogin(ctx context.Context, pair string) error
}

const (
	// ledgerTimeout bounds each call to the ledger: a check must not
	// hang on a database that does not answer (its bounds are then the
	// process's).
	ledgerTimeout = 2 * time.Second
	// ledgerRest is how long a process leaves the ledger alone after a
	// call failed: during an outage its logins do not each wait on it.
	ledgerRest = 5 * time.Second
)

// sharedGuesses is what one attempt read from the ledger (if it did),
// under the keys it writes back to.
type sharedGuesses struct {
	client, pair, account string // ledger keys; pair and account may be empty
	read                  bool   // debts and known were read
	debts                 map[string]float64
	known                 bool
	knownElsewhere        bool // not read, but KnownPair said so
}

// ledgerKeys are the ledger's keys of a check of account from client:
// stable across processes (the local tables' hashes are seeded per
// process), and apart for each bucket kind.
func ledgerKeys(client, account string, accountBound bool) (c, pair, acc string) {
	client = ClientKey(client)
	c = "client\x00" + client
	if account != "" {
		pair = "pair\x00" + account + "\x00" + client
		if accountBound {
			acc = "account\x00" + account
		}
	}
	return c, pair, acc
}

// loadShared makes a's ledger keys for a check of account (already in
// accountKey's spelling) from client and, if read, reads what the ledger
// holds under them.
func (g *Guesses) loadShared(ctx context.Context, client, account string, accountBound, read bool) *sharedGuesses {
	sh := &sharedGuesses{}
	sh.client, sh.pair, sh.account = ledgerKeys(client, account, accountBound)
	if !read && sh.pair != "" && g.Ledger.KnownPair(sh.pair, knownLoginFor) {
		// Refused here, but the pair logged in on another process: its
		// own bucket and no account bound, as if it had been here.
		sh.knownElsewhere = true
	}
	if !read || g.ledgerResting() {
		return sh
	}
	keys := []string{sh.client}
	for _, k := range []string{sh.pair, sh.account} {
		if k != "" {
			keys = append(keys, k)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, ledgerTimeout)
	defer cancel()
	debts, known, err := g.Ledger.LoadGuesses(ctx, keys, sh.pair, knownLoginFor)
	if err == nil && len(debts) != len(keys) {
		err = errLedgerAnswer
	}
	if err != nil {
		g.ledgerFailed(err)
		return sh
	}
	sh.read, sh.known = true, known
	sh.debts = make(map[string]float64, len(keys))
	for i, k := range keys {
		sh.debts[k] = debts[i]
	}
	return sh
}

// errLedgerAnswer is a ledger that answered a different number of records
// than keys asked for.
var errLedgerAnswer = errors.New("login ledger: wrong number of records")

// ledgerFailed tells LedgerFailed and rests the ledger for ledgerRest.
func (g *Guesses) ledgerFailed(err error) {
	g.ledgerDownUntil.Store(time.Now().Add(ledgerRest).UnixNano())
	if g.LedgerFailed != nil {
		g.LedgerFailed(err)
	}
}

// ledgerResting reports whether a call failed less than ledgerRest ago.
func (g *Guesses) ledgerResting() bool {
	return time.Now().UnixNano() < g.ledgerDownUntil.Load()
}

// knownPair reports whether the ledger says the pair logged in lately.
func (sh *sharedGuesses) knownPair() bool {
	return sh != nil && (sh.read && sh.known || sh.knownElsewhere)
}

// debt is the ledger's debt of the bucket a check is charged to: the
// account's, else the pair's (known) or the client's; 0 if not read.
func (sh *sharedGuesses) debt(known, account bool) float64 {
	if sh == nil || !sh.read {
		return 0
	}
	switch {
	case account:
		return sh.debts[sh.account]
	case known:
		return sh.debts[sh.pair]
	default:
		return sh.debts[sh.client]
	}
}

// recordShared writes a's outcome to the ledger: a failure to the bucket
// and account it was charged to, a good login to the pair.
func (g *Guesses) recordShared(a *GuessAttempt, ok bool) {
	if g.ledgerResting() {
		return
	}
	sh := a.shared
	ctx, cancel := context.WithTimeout(context.Background(), ledgerTimeout)
	defer cancel()
	var err error
	if ok {
		if sh.pair != "" {
			err = g.Ledger.AddGoodLogin(ctx, sh.pair)
		}
	} else {
		if g.perClient > 0 {
			key := sh.client
			if a.bucket == a.known {
				key = sh.pair
			}
			err = g.Ledger.AddGuessFailure(ctx, key, g.perClient/g.window.Seconds())
		}
		if err == nil && a.charged && g.perAccount > 0 {
			err = g.Ledger.AddGuessFailure(ctx, sh.account, g.perAccount/g.window.Seconds())
		}
	}
	if err != nil {
		g.ledgerFailed(err)
	}
}
