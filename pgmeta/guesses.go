package pgmeta

// The login ledger (authscope.GuessLedger): failed logins and good ones,
// shared by the replicas so that a login_limit bound is the cluster's.
// Keys are user names and client addresses, partly the client's choice:
// they are stored as HMACs under a secret of the database's own, so the
// tables hold neither in the clear and every key has one size. Every time
// is the database's (now()), so replicas whose clocks differ still decay
// and sweep the same rows alike. Rows of failures that have fully decayed
// are swept in the background at most once a minute per replica; the
// table then holds about what the bounds let through in one window.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/jackc/pgx/v5"
)

// knownLoginsKept is how long a good login is kept: longer than the auth
// layer asks about (30 days).
const knownLoginsKept = 31 * 24 * time.Hour

// guessSweepEvery is how often at most one process sweeps decayed rows.
const guessSweepEvery = time.Minute

// ledgerSecretName names the HMAC key of the ledger in auth_secrets.
const ledgerSecretName = "login-ledger"

// guessKeys holds the HMAC key of the ledger, read from auth_secrets on
// first use, when this process last swept, and its copy of login_known.
type guessKeys struct {
	mu        sync.Mutex
	secret    []byte
	lastSweep time.Time

	// known is login_known as of the last poll (key → unix seconds of
	// the login), for KnownPair; knownUpTo is the newest login time
	// seen, from which the next poll reads. knownAfter is the key of
	// the last row read when the last poll stopped on a full page: the
	// next one goes on strictly after (knownUpTo, knownAfter).
	known      map[[sha256.Size]byte]int64
	knownUpTo  time.Time
	knownAfter []byte
	polledAt   time.Time
	polling    bool
}

const (
	// knownPollEvery is how often at most KnownPair starts a poll of
	// login_known: how soon a login on one replica is known on another.
	knownPollEvery = 2 * time.Second
	// knownPollRows bounds one page of a poll, knownPollPages the pages
	// of one poll; a longer backlog is read over the next polls.
	knownPollRows  = 10000
	knownPollPages = 4
	// knownMax bounds the copy of login_known (logins of real users
	// from their addresses: nobody without a password adds one); past it
	// the oldest half is forgotten.
	knownMax = 1 << 17
)

var _ authscope.GuessLedger = (*Store)(nil)

// ledgerKeys are keys' names in the tables.
func (s *Store) ledgerKeys(ctx context.Context, keys ...string) ([][]byte, error) {
	s.guesses.mu.Lock()
	secret := s.guesses.secret
	s.guesses.mu.Unlock()
	if secret == nil {
		fresh := make([]byte, 32)
		if _, err := rand.Read(fresh); err != nil {
			return nil, fmt.Errorf("login ledger: %w", err)
		}
		got, err := s.offerSecret(ctx, ledgerSecretName, fresh)
		if err != nil {
			return nil, failed(context.Background(), "login ledger secret", err)
		}
		if len(got) != 32 {
			return nil, fmt.Errorf("login ledger: stored secret has %d bytes, want 32", len(got))
		}
		s.guesses.mu.Lock()
		s.guesses.secret = got
		s.guesses.mu.Unlock()
		secret = got
	}
	out := make([][]byte, len(keys))
	for i, k := range keys {
		m := hmac.New(sha256.New, secret)
		m.Write([]byte(k))
		out[i] = m.Sum(nil)
	}
	return out, nil
}

// LoadGuesses returns the failures recorded under keys, decayed to now,
// and whether pair logged in within knownFor.
func (s *Store) LoadGuesses(ctx context.Context, keys []string, pair string, knownFor time.Duration) ([]float64, bool, error) {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	hashed, err := s.ledgerKeys(ctx, append(keys[:len(keys):len(keys)], pair)...)
	if err != nil {
		return nil, false, err
	}
	pairKey := hashed[len(keys)]
	if pair == "" {
		pairKey = nil
	}
	hashed = hashed[:len(keys)]
	index := make(map[string]int, len(keys))
	for i, h := range hashed {
		index[string(h)] = i
	}
	// One round trip: the good login comes back as a row of debt -1
	// (failures' debts are never negative).
	rows, _ := s.pool.Query(ctx, `SELECT key, GREATEST(debt - GREATEST(EXTRACT(EPOCH FROM now() - at)::float8, 0) * rate, 0)
	FROM login_failures WHERE key = ANY($1)
UNION ALL SELECT key, -1 FROM login_known WHERE key = $2 AND at > now() - make_interval(secs => $3)`,
		hashed, pairKey, knownFor.Seconds())
	debts := make([]float64, len(keys))
	known := false
	var key []byte
	var debt float64
	_, err = pgx.ForEachRow(rows, []any{&key, &debt}, func() error {
		if debt < 0 {
			known = true
		} else if i, ok := index[string(key)]; ok {
			debts[i] = debt
		}
		return nil
	})
	if err != nil {
		return nil, false, failed(context.Background(), "login ledger", err)
	}
	return debts, known, nil
}

// AddGuessFailure adds one failure to key's debt, what was recorded
// having decayed at perSecond since, and now and then starts a sweep of
// the rows that decayed to nothing.
func (s *Store) AddGuessFailure(ctx context.Context, key string, perSecond float64) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	h, err := s.ledgerKeys(ctx, key)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO login_failures AS f (key, debt, rate, at) VALUES ($1, 1, $2, now())
ON CONFLICT (key) DO UPDATE SET
	debt = GREATEST(f.debt - GREATEST(EXTRACT(EPOCH FROM now() - f.at)::float8, 0) * $2, 0) + 1,
	rate = $2,
	at = GREATEST(f.at, now())`, h[0], perSecond)
	if err != nil {
		return failed(context.Background(), "login ledger", err)
	}
	s.sweepGuessesLater()
	return nil
}

// AddGoodLogin records that pair logged in now.
func (s *Store) AddGoodLogin(ctx context.Context, pair string) error {
	ctx, cancel := s.callCtx(ctx)
	defer cancel()
	h, err := s.ledgerKeys(ctx, pair)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO login_known AS k (key, at) VALUES ($1, now())
ON CONFLICT (key) DO UPDATE SET at = GREATEST(k.at, now())`, h[0])
	if err != nil {
		return failed(context.Background(), "login ledger", err)
	}
	return nil
}

// KnownPair reports whether pair logged in within knownFor according to
// this process's copy of login_known, and starts a poll of the table
// when the copy is older than knownPollEvery. It never waits: a copy not
// read yet (or a secret not read yet) knows nobody.
func (s *Store) KnownPair(pair string, knownFor time.Duration) bool {
	g := &s.guesses
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.polling && time.Since(g.polledAt) >= knownPollEvery {
		g.polling = true
		go s.pollKnown()
	}
	if g.secret == nil || g.known == nil {
		return false
	}
	m := hmac.New(sha256.New, g.secret)
	m.Write([]byte(pair))
	var k [sha256.Size]byte
	copy(k[:], m.Sum(nil))
	at, ok := g.known[k]
	return ok && time.Since(time.Unix(at, 0)) < knownFor
}

// pollKnown reads the good logins recorded since the last poll into the
// copy KnownPair reads.
func (s *Store) pollKnown() {
	g := &s.guesses
	defer func() {
		g.mu.Lock()
		g.polling = false
		g.polledAt = time.Now()
		g.mu.Unlock()
	}()
	ctx, cancel := s.callCtx(s.life)
	defer cancel()
	if _, err := s.ledgerKeys(ctx); err != nil {
		return
	}
	for range knownPollPages {
		if full, err := s.pollKnownPage(ctx); err != nil || !full {
			return
		}
	}
}

// pollKnownPage reads one page of login_known into the copy, and says
// whether it was full (more may follow).
//
// Pages follow each other in (at, key) order. After a page that was not
// full, the next poll reads its last second again from the start: logins
// committed out of order around the last one seen are read then rather
// than missed. After a full page it goes on strictly after the last row
// instead: re-reading from the start of a second holding more than a page
// of logins would read the same page for ever.
func (s *Store) pollKnownPage(ctx context.Context) (full bool, err error) {
	g := &s.guesses
	g.mu.Lock()
	since, after := g.knownUpTo, g.knownAfter
	g.mu.Unlock()
	var rows pgx.Rows
	switch {
	case after != nil:
		rows, err = s.pool.Query(ctx, "SELECT key, at FROM login_known WHERE (at, key) > ($1, $2) ORDER BY at, key LIMIT $3",
			since, after, knownPollRows)
	case since.IsZero():
		rows, err = s.pool.Query(ctx, "SELECT key, at FROM login_known WHERE at >= $1 ORDER BY at, key LIMIT $2",
			time.Now().Add(-knownLoginsKept), knownPollRows)
	default:
		rows, err = s.pool.Query(ctx, "SELECT key, at FROM login_known WHERE at >= $1 ORDER BY at, key LIMIT $2",
			since.Add(-time.Second), knownPollRows)
	}
	if err != nil {
		return false, err
	}
	type login struct {
		key []byte
		at  time.Time
	}
	logins, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (login, error) {
		var l login
		err := r.Scan(&l.key, &l.at)
		return l, err
	})
	if err != nil {
		return false, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.known == nil {
		g.known = make(map[[sha256.Size]byte]int64)
	}
	for _, l := range logins {
		var k [sha256.Size]byte
		copy(k[:], l.key)
		g.known[k] = max(g.known[k], l.at.Unix())
	}
	full = len(logins) == knownPollRows
	g.knownAfter = nil
	if n := len(logins); n > 0 {
		last := logins[n-1]
		if last.at.After(g.knownUpTo) || full {
			g.knownUpTo = last.at
		}
		if full {
			g.knownAfter = last.key
		}
	}
	if len(g.known) > knownMax {
		g.forgetOldest()
	}
	return full, nil
}

// forgetOldest drops the older half of the copy of login_known, and
// every login older than half of knownLoginsKept: a user who logged in a
// minute ago stays known. g.mu is held.
func (g *guessKeys) forgetOldest() {
	cut := time.Now().Add(-knownLoginsKept / 2).Unix()
	ats := make([]int64, 0, len(g.known))
	for _, at := range g.known {
		ats = append(ats, at)
	}
	slices.Sort(ats)
	cut = max(cut, ats[len(ats)-knownMax/2])
	for k, at := range g.known {
		if at < cut {
			delete(g.known, k)
		}
	}
	// Logins of the same second as the cut: as many as the bound needs.
	for k, at := range g.known {
		if len(g.known) <= knownMax/2 {
			break
		}
		if at == cut {
			delete(g.known, k)
		}
	}
}

// sweepGuessesLater starts, at most once per guessSweepEvery in this
// process, a sweep of the failures that decayed to nothing and of the
// good logins too old to count, in the background: a login does not wait
// for it. A failed sweep is left to the next one.
func (s *Store) sweepGuessesLater() {
	now := time.Now()
	s.guesses.mu.Lock()
	due := now.Sub(s.guesses.lastSweep) >= guessSweepEvery
	if due {
		s.guesses.lastSweep = now
	}
	s.guesses.mu.Unlock()
	if !due {
		return
	}
	go s.sweepGuesses()
}

func (s *Store) sweepGuesses() {
	ctx, cancel := s.callCtx(s.life)
	defer cancel()
	_, _ = s.pool.Exec(ctx, "DELETE FROM login_failures WHERE debt - EXTRACT(EPOCH FROM now() - at)::float8 * rate <= 0")
	_, _ = s.pool.Exec(ctx, "DELETE FROM login_known WHERE at < now() - make_interval(secs => $1)", knownLoginsKept.Seconds())
}
