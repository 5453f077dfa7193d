package caddymodule

import (
	"context"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// recordsLedger shares login_limit's counts through the handler's auth
// records when they are a database the replicas share (PostgreSQL, see
// pgmeta/guesses.go). A single node's records do not keep a ledger: its
// process's own tables are the whole count, and the ledger's calls do
// nothing.
type recordsLedger struct {
	open   func() (authRecords, error)
	opened atomic.Pointer[ledgerBox] // set once the records opened
}

// ledgerBox is the records' ledger; l nil when they keep none.
type ledgerBox struct{ l authscope.GuessLedger }

// ledger returns the records' ledger, or nil when they keep none,
// opening them (they open on first use) until that succeeds once.
func (f *recordsLedger) ledger() (authscope.GuessLedger, error) {
	if b := f.opened.Load(); b != nil {
		return b.l, nil
	}
	rec, err := f.open()
	if err != nil {
		return nil, err
	}
	l, _ := rec.(authscope.GuessLedger)
	f.opened.Store(&ledgerBox{l: l})
	return l, nil
}

// KnownPair never waits, as the interface asks: before the records were
// opened by another call (which a check it refuses does not make), it
// knows nobody.
func (f *recordsLedger) KnownPair(pair string, knownFor time.Duration) bool {
	b := f.opened.Load()
	return b != nil && b.l != nil && b.l.KnownPair(pair, knownFor)
}

func (f *recordsLedger) LoadGuesses(ctx context.Context, keys []string, pair string, knownFor time.Duration) ([]float64, bool, error) {
	l, err := f.ledger()
	if l == nil || err != nil {
		return make([]float64, len(keys)), false, err
	}
	return l.LoadGuesses(ctx, keys, pair, knownFor)
}

func (f *recordsLedger) AddGuessFailure(ctx context.Context, key string, perSecond float64) error {
	l, err := f.ledger()
	if l == nil || err != nil {
		return err
	}
	return l.AddGuessFailure(ctx, key, perSecond)
}

func (f *recordsLedger) AddGoodLogin(ctx context.Context, pair string) error {
	l, err := f.ledger()
	if l == nil || err != nil {
		return err
	}
	return l.AddGoodLogin(ctx, pair)
}

// ledgerWarnEvery spaces the warnings of a ledger that cannot be reached:
// during an outage every counted login would log one.
const ledgerWarnEvery = time.Minute

// ledgerFailedLogger warns, at most once per ledgerWarnEvery, that the
// replicas' shared login counts cannot be read or written.
func ledgerFailedLogger(logger *zap.Logger) func(error) {
	var last atomic.Int64
	return func(err error) {
		now := time.Now().UnixNano()
		prev := last.Load()
		if now-prev < int64(ledgerWarnEvery) || !last.CompareAndSwap(prev, now) {
			return
		}
		logger.Warn("login_limit: the count of failed logins shared in the metadata database cannot be reached; until it can, this replica bounds logins with its own counts",
			zap.Error(err))
	}
}
