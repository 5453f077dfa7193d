package pgmeta

// Leases (package coord) as rows: one per key, taken by a random token
// until an expiry on PostgreSQL's clock. Acquire is one INSERT ... ON
// CONFLICT that takes the row only if it expired, so any number of
// replicas racing for a key leave exactly one holder.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/jackc/pgx/v5"
)

// Leases returns the store's leases, shared by every replica on the
// database.
func (s *Store) Leases() coord.Leases { return leases{s} }

type leases struct{ s *Store }

type lease struct {
	s     *Store
	key   string
	token []byte

	mu       sync.Mutex
	deadline time.Time
}

// callCtx bounds one lease call by ctx and the store's timeout.
func (s *Store) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// micros is d in whole microseconds, PostgreSQL's resolution.
func micros(d time.Duration) int64 { return d.Microseconds() }

func (ls leases) Acquire(ctx context.Context, key string, ttl time.Duration) (coord.Lease, bool, error) {
	if err := coord.CheckKey(key, ttl); err != nil {
		return nil, false, err
	}
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	ctx, cancel := ls.s.callCtx(ctx)
	defer cancel()
	// The deadline counts from before the request is sent: the row's
	// expiry, set later on the server, is never earlier than that.
	start := time.Now()
	var one int
	committed, err := ls.s.leaseWrite(ctx, func(tx pgx.Tx) error {
		return tx.QueryRow(ctx, `INSERT INTO leases (key, token, expires)
		VALUES ($1, $2, clock_timestamp() + $3 * interval '1 microsecond')
		ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, expires = EXCLUDED.expires
		WHERE leases.expires <= clock_timestamp()
		RETURNING 1`, key, token, micros(ttl)).Scan(&one)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	l := &lease{s: ls.s, key: key, token: token, deadline: start.Add(ttl)}
	if err != nil {
		if committed != writeFailed {
			// The row may be ours all the same: the COMMIT can run and
			// its answer be lost. A lease no one knows they hold would
			// keep everyone waiting on key until it expired: a fill's
			// followers on every replica (a 503 after ttl), a session's
			// next chunk, the next GC. So it is released as its holder
			// would, token and all, until the store closes.
			go coord.Free(ls.s.life, l, ttl)
		}
		return nil, false, fmt.Errorf("%w: lease %s: %w", ErrUnavailable, key, err)
	}
	return l, true, nil
}

// A lease write (Acquire, Renew) runs in a transaction committed once
// the write's answer is in: a statement whose answer never came (the
// server stopped, SIGSTOP or a frozen VM, and the call timed out) still
// waits in the server's socket, and on its own would run when the server
// continues, after its caller gave up on it, taking or extending the row
// for a whole ttl from then, for a holder that has stopped renewing and
// will not release it (the GC lease held ~30 s after such a stop with no
// pass running). In a transaction it runs and is rolled back, as the
// server finds its client gone. Only a COMMIT sent and unanswered may
// still land; its write ran before the stop, so the expiry it sets is
// the lease's own deadline, give or take one round trip, not a ttl from
// whenever the server wakes.

// leaseWriteOutcome says how far a failed lease write got.
type leaseWriteOutcome int

const (
	writeFailed  leaseWriteOutcome = iota // not committed: nothing changed
	writeUnknown                          // COMMIT sent, no answer: it may have run
	writeCommitted
)

func (s *Store) leaseWrite(ctx context.Context, write func(pgx.Tx) error) (leaseWriteOutcome, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return writeFailed, err
	}
	if err := write(tx); err != nil {
		// ctx may have ended (the write timed out): the rollback gets a
		// bound of its own. A connection the timeout broke is closed, and
		// the server rolls back without it.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
		_ = tx.Rollback(rctx)
		cancel()
		return writeFailed, err
	}
	if err := tx.Commit(ctx); err != nil {
		return writeUnknown, err
	}
	return writeCommitted, nil
}

// Wait polls: a release or an expiry has no event every replica would
// see without a connection of its own per waiter (LISTEN), and fills
// wait seconds, not milliseconds.
func (ls leases) Wait(ctx context.Context, key string) error {
	delay := 25 * time.Millisecond
	for {
		held, err := ls.held(ctx, key)
		if err != nil {
			return err
		}
		if !held {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

func (ls leases) held(ctx context.Context, key string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	cctx, cancel := ls.s.callCtx(ctx)
	defer cancel()
	var held bool
	err := ls.s.pool.QueryRow(cctx, "SELECT expires > clock_timestamp() FROM leases WHERE key = $1", key).Scan(&held)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		return false, fmt.Errorf("%w: lease %s: %w", ErrUnavailable, key, err)
	}
	return held, nil
}

func (l *lease) Key() string { return l.key }
func (l *lease) Deadline() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deadline
}

func (l *lease) Renew(ctx context.Context, ttl time.Duration) error {
	if err := coord.CheckKey(l.key, ttl); err != nil {
		return err
	}
	ctx, cancel := l.s.callCtx(ctx)
	defer cancel()
	start := time.Now()
	var affected int64
	_, err := l.s.leaseWrite(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE leases SET expires = clock_timestamp() + $3 * interval '1 microsecond'
		WHERE key = $1 AND token = $2`, l.key, l.token, micros(ttl))
		affected = tag.RowsAffected()
		return err
	})
	if err != nil {
		// Whether a COMMIT that got no answer ran or not, the deadline
		// stays the last one confirmed: the holder stops in time either
		// way.
		return fmt.Errorf("%w: lease %s: %w", ErrUnavailable, l.key, err)
	}
	if affected == 0 {
		return fmt.Errorf("%w: %s", coord.ErrLost, l.key)
	}
	l.mu.Lock()
	l.deadline = start.Add(ttl)
	l.mu.Unlock()
	return nil
}

func (l *lease) Release(ctx context.Context) error {
	ctx, cancel := l.s.callCtx(ctx)
	defer cancel()
	if _, err := l.s.pool.Exec(ctx, "DELETE FROM leases WHERE key = $1 AND token = $2", l.key, l.token); err != nil {
		return fmt.Errorf("%w: lease %s: %w", ErrUnavailable, l.key, err)
	}
	return nil
}
