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
type recordsLedger func() (authRecords, error)

// ledger opens the records (they open on first use) and returns their
// ledger, or nil when they keep none.
func (f recordsLedger) ledger() (authscope.GuessLedger, error) {
	rec, err := f()
	if err != nil {
		return nil, err
	}
	l, _ := rec.(authscope.GuessLedger)
	return l, nil
}

func (f recordsLedger) LoadGuesses(ctx context.Context, keys []string, pair string) ([]authscope.GuessRecord, time.Time, error) {
	l, err := f.ledger()
	if l == nil || err != nil {
		return make([]authscope.GuessRecord, len(keys)), time.Time{}, err
	}
	return l.LoadGuesses(ctx, keys, pair)
}

func (f recordsLedger) AddGuessFailure(ctx context.Context, key string, perSecond float64, at time.Time) error {
	l, err := f.ledger()
	if l == nil || err != nil {
		return err
	}
	return l.AddGuessFailure(ctx, key, perSecond, at)
}

func (f recordsLedger) AddGoodLogin(ctx context.Context, pair string, at time.Time) error {
	l, err := f.ledger()
	if l == nil || err != nil {
		return err
	}
	return l.AddGoodLogin(ctx, pair, at)
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
		logger.Warn("login_limit: the replicas' shared count of failed logins cannot be reached; until it can, each replica bounds logins on its own",
			zap.Error(err))
	}
}
