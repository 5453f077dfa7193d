package pgmeta

// The login ledger (authscope.GuessLedger): failed logins and good ones,
// shared by the replicas so that a login_limit bound is the cluster's.
// Keys are user names and client addresses, partly the client's choice:
// they are stored as HMACs under a secret of the database's own, so the
// table holds neither in the clear and every key has one size. Rows of
// failures that have fully decayed are swept at most once a minute; the
// table then holds about what the bounds let through in one window.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/jackc/pgx/v5"
)

// knownLoginsKept is how long a good login is remembered: the auth
// layer exempts a pair that logged in within 30 days.
const knownLoginsKept = 31 * 24 * time.Hour

// guessSweepEvery is how often at most one process sweeps decayed rows.
const guessSweepEvery = time.Minute

// guessKeys holds the HMAC key of the ledger, read from auth_secrets on
// first use.
type guessKeys struct {
	mu        sync.Mutex
	secret    []byte
	lastSweep time.Time
}

var _ authscope.GuessLedger = (*Store)(nil)

// ledgerKey is key's name in the tables.
func (s *Store) ledgerKey(key string) ([]byte, error) {
	s.guesses.mu.Lock()
	secret := s.guesses.secret
	s.guesses.mu.Unlock()
	if secret == nil {
		var err error
		if secret, err = s.AuthSecret("login-ledger", 32); err != nil {
			return nil, err
		}
		s.guesses.mu.Lock()
		s.guesses.secret = secret
		s.guesses.mu.Unlock()
	}
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(key))
	return m.Sum(nil), nil
}

// LoadGuesses returns the failures recorded under keys and when pair last
// logged in well (zero: not within knownLoginsKept).
func (s *Store) LoadGuesses(ctx context.Context, keys []string, pair string) ([]authscope.GuessRecord, time.Time, error) {
	hashed := make([][]byte, len(keys))
	index := make(map[string]int, len(keys))
	for i, k := range keys {
		h, err := s.ledgerKey(k)
		if err != nil {
			return nil, time.Time{}, err
		}
		hashed[i] = h
		index[string(h)] = i
	}
	var pairKey []byte
	if pair != "" {
		var err error
		if pairKey, err = s.ledgerKey(pair); err != nil {
			return nil, time.Time{}, err
		}
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	// One round trip: the good login comes back as a row of debt -1
	// (failures' debts are never negative).
	rows, _ := s.pool.Query(ctx, `SELECT key, debt, at FROM login_failures WHERE key = ANY($1)
UNION ALL SELECT key, -1, at FROM login_known WHERE key = $2 AND at > $3`,
		hashed, pairKey, time.Now().Add(-knownLoginsKept))
	recs := make([]authscope.GuessRecord, len(keys))
	var knownAt time.Time
	var key []byte
	var r authscope.GuessRecord
	_, err := pgx.ForEachRow(rows, []any{&key, &r.Debt, &r.At}, func() error {
		if r.Debt < 0 {
			knownAt = r.At
		} else if i, ok := index[string(key)]; ok {
			recs[i] = r
		}
		return nil
	})
	if err != nil {
		return nil, time.Time{}, failed(context.Background(), "login ledger", err)
	}
	return recs, knownAt, nil
}

// AddGuessFailure adds one failure to key's debt, what was recorded
// having decayed at perSecond since, and now and then sweeps the rows
// that decayed to nothing.
func (s *Store) AddGuessFailure(ctx context.Context, key string, perSecond float64, at time.Time) error {
	h, err := s.ledgerKey(key)
	if err != nil {
		return err
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	// A row written by a replica whose clock is ahead is not decayed
	// backwards (GREATEST(..., 0) on the elapsed time), and keeps its at.
	_, err = s.pool.Exec(ctx, `INSERT INTO login_failures (key, debt, rate, at) VALUES ($1, 1, $2, $3)
ON CONFLICT (key) DO UPDATE SET
	debt = GREATEST(login_failures.debt - GREATEST(EXTRACT(EPOCH FROM ($3 - login_failures.at))::float8, 0) * $2, 0) + 1,
	rate = $2,
	at = GREATEST(login_failures.at, $3)`, h, perSecond, at)
	if err != nil {
		return failed(context.Background(), "login ledger", err)
	}
	s.sweepGuesses(ctx, at)
	return nil
}

// AddGoodLogin records that pair logged in at at.
func (s *Store) AddGoodLogin(ctx context.Context, pair string, at time.Time) error {
	h, err := s.ledgerKey(pair)
	if err != nil {
		return err
	}
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	_, err = s.pool.Exec(ctx, `INSERT INTO login_known (key, at) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET at = GREATEST(login_known.at, $2)`, h, at)
	if err != nil {
		return failed(context.Background(), "login ledger", err)
	}
	return nil
}

// sweepGuesses deletes, at most once per guessSweepEvery in this process,
// the failures that decayed to nothing and the good logins too old to
// count. A failed sweep is left to the next one.
func (s *Store) sweepGuesses(ctx context.Context, now time.Time) {
	s.guesses.mu.Lock()
	due := now.Sub(s.guesses.lastSweep) >= guessSweepEvery
	if due {
		s.guesses.lastSweep = now
	}
	s.guesses.mu.Unlock()
	if !due {
		return
	}
	_, _ = s.pool.Exec(ctx, "DELETE FROM login_failures WHERE debt - EXTRACT(EPOCH FROM ($1 - at))::float8 * rate <= 0", now)
	_, _ = s.pool.Exec(ctx, "DELETE FROM login_known WHERE at < $1", now.Add(-knownLoginsKept))
}
