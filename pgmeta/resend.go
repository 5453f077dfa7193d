package pgmeta

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// A pooled connection can be dead without the pool knowing: reset by the
// network, a load balancer's idle timeout, or PostgreSQL restarted while
// it sat idle. pgx pings a connection before handing it out only once it
// has been idle a second, so a statement right after such a blip fails on
// it although PostgreSQL answers (a 503 for the registry's client). A
// statement that failed before a byte of it was sent (pgconn.SafeToRetry)
// is sent again on another connection: the dead one is dropped, and as
// several may have died at once, up to maxResends times.

// maxResends bounds the resends of one statement: each drops a dead
// connection, and one that still fails has met PostgreSQL's own failure.
const maxResends = 8

// resendingPool is the pool, sending a statement again on another
// connection when the one it was given turned out dead before it was
// sent. Transactions (pgx.BeginFunc over it) resend their BEGIN the same
// way, through the pool's Begin; inTx sends a whole transaction again.
type resendingPool struct{ *pgxpool.Pool }

func resend(ctx context.Context, err error, tries int) bool {
	return err != nil && tries < maxResends && pgconn.SafeToRetry(err) && ctx.Err() == nil
}

func (p resendingPool) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := p.Pool.Exec(ctx, sql, args...)
	for tries := 0; resend(ctx, err, tries); tries++ {
		tag, err = p.Pool.Exec(ctx, sql, args...)
	}
	return tag, err
}

// Query reads the first row before it returns: pgx reports a statement
// that could not be sent only when its rows are read.
func (p resendingPool) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	for tries := 0; ; tries++ {
		rows, err := p.Pool.Query(ctx, sql, args...)
		if err != nil {
			if resend(ctx, err, tries) {
				continue
			}
			return rows, err
		}
		if rows.Next() {
			return &peekedRows{Rows: rows, first: true}, nil
		}
		if resend(ctx, rows.Err(), tries) {
			rows.Close()
			continue
		}
		return rows, nil // no row, or the failure rows.Err tells
	}
}

// peekedRows are rows whose first row Query has read already.
type peekedRows struct {
	pgx.Rows
	first bool // the next Next is that row's
}

func (r *peekedRows) Next() bool {
	if r.first {
		r.first = false
		return true
	}
	return r.Rows.Next()
}

func (p resendingPool) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return resendingRow{p: p.Pool, ctx: ctx, sql: sql, args: args}
}

func (p resendingPool) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := p.Pool.Begin(ctx)
	for tries := 0; resend(ctx, err, tries); tries++ {
		tx, err = p.Pool.Begin(ctx)
	}
	return tx, err
}

// resendingRow runs its query when scanned (as callers do at once), and
// again while it failed on a dead connection.
type resendingRow struct {
	p    *pgxpool.Pool
	ctx  context.Context
	sql  string
	args []any
}

func (r resendingRow) Scan(dest ...any) error {
	err := r.p.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...)
	for tries := 0; resend(r.ctx, err, tries); tries++ {
		err = r.p.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...)
	}
	return err
}
