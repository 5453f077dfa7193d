package authscope

import (
	"context"
	"time"
)

// Replicas of one registry share their failed logins through a
// GuessLedger (a table of the metadata database): each process still
// charges and bounds checks in its own tables, as Guesses does alone, but
// before a check it raises its counts to what the ledger holds, and
// after one it records the outcome there. A client that spreads its
// guesses over N replicas then gets the bound once, not N times.
//
// The ledger is read once per check that Guesses counts at all, which
// excludes logins remembered from a recent good one: the usual traffic of
// a client that logged in costs it nothing.

// GuessLedger records failed and good logins for several processes.
// Keys are opaque strings of any length, chosen partly by clients (user
// names, addresses): an implementation stores them hashed. Each call is
// bounded by its context.
type GuessLedger interface {
	// LoadGuesses returns the failures recorded under each of keys, in
	// order (a zero GuessRecord for a key with none), and when pair last
	// logged in well (zero: never, or too long ago to keep).
	LoadGuesses(ctx context.Context, keys []string, pair string) ([]GuessRecord, time.Time, error)
	// AddGuessFailure adds one failure to key's debt at at, after letting
	// what was recorded decay at perSecond since it was recorded.
	AddGuessFailure(ctx context.Context, key string, perSecond float64, at time.Time) error
	// AddGoodLogin records that pair logged in at at.
	AddGoodLogin(ctx context.Context, pair string, at time.Time) error
}

// GuessRecord is a key's failures in a GuessLedger: Debt as of At.
type GuessRecord struct {
	Debt float64
	At   time.Time
}

// ledgerTimeout bounds each call to the ledger: a check must not hang on
// a database that does not answer (its bounds are then the process's).
const ledgerTimeout = 2 * time.Second

// sharedGuesses is what one attempt read from the ledger, under the keys
// it writes back to.
type sharedGuesses struct {
	client, pair, account string // ledger keys; pair and account may be empty
	records               map[string]GuessRecord
	knownAt               time.Time
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

// loadShared reads what the ledger holds for a check of account (already
// in accountKey's spelling) from client; nil when it cannot be read.
func (g *Guesses) loadShared(ctx context.Context, client, account string, accountBound bool) *sharedGuesses {
	sh := &sharedGuesses{records: map[string]GuessRecord{}}
	sh.client, sh.pair, sh.account = ledgerKeys(client, account, accountBound)
	keys := []string{sh.client}
	for _, k := range []string{sh.pair, sh.account} {
		if k != "" {
			keys = append(keys, k)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, ledgerTimeout)
	defer cancel()
	recs, knownAt, err := g.Ledger.LoadGuesses(ctx, keys, sh.pair)
	if err == nil && len(recs) != len(keys) {
		err = errLedgerAnswer
	}
	if err != nil {
		g.ledgerFailed(err)
		return nil
	}
	for i, k := range keys {
		sh.records[k] = recs[i]
	}
	sh.knownAt = knownAt
	return sh
}

// errLedgerAnswer is a ledger that answered a different number of records
// than keys asked for.
var errLedgerAnswer = ledgerError("login ledger: wrong number of records")

type ledgerError string

func (e ledgerError) Error() string { return string(e) }

func (g *Guesses) ledgerFailed(err error) {
	if g.LedgerFailed != nil {
		g.LedgerFailed(err)
	}
}

// knownPair reports whether the pair logged in within knownLoginFor, as
// the ledger says (false without a ledger's answer).
func (sh *sharedGuesses) knownPair(now int64) bool {
	return sh != nil && !sh.knownAt.IsZero() && now-sh.knownAt.UnixNano() < int64(knownLoginFor)
}

// debt is the ledger's debt, decayed to now (unix nanoseconds), of the
// bucket a check is charged to: the account's, else the pair's (known)
// or the client's.
func (sh *sharedGuesses) debt(g *Guesses, known, account bool, now int64) float64 {
	if sh == nil {
		return 0
	}
	key, limit := sh.client, g.perClient
	switch {
	case account:
		key, limit = sh.account, g.perAccount
	case known:
		key = sh.pair
	}
	r, ok := sh.records[key]
	if !ok || r.At.IsZero() || limit <= 0 {
		return 0
	}
	el := max(now-r.At.UnixNano(), 0) // a clock ahead of ours: no decay
	return max(r.Debt-float64(el)/float64(g.window)*limit, 0)
}

// recordShared writes a's outcome to the ledger: a failure to the bucket
// and account it was charged to, a good login to the pair.
func (g *Guesses) recordShared(a *GuessAttempt, ok bool) {
	sh := a.shared
	ctx, cancel := context.WithTimeout(context.Background(), ledgerTimeout)
	defer cancel()
	now := g.now()
	var err error
	if ok {
		if sh.pair != "" {
			err = g.Ledger.AddGoodLogin(ctx, sh.pair, now)
		}
	} else {
		if g.perClient > 0 {
			key := sh.client
			if a.bucket == a.known {
				key = sh.pair
			}
			err = g.Ledger.AddGuessFailure(ctx, key, g.perClient/g.window.Seconds(), now)
		}
		if err == nil && a.charged && g.perAccount > 0 {
			err = g.Ledger.AddGuessFailure(ctx, sh.account, g.perAccount/g.window.Seconds(), now)
		}
	}
	if err != nil {
		g.ledgerFailed(err)
	}
}
