// Package pgmeta keeps the registry's metadata in PostgreSQL, so that any
// number of replicas share it: PostgreSQL is the source of truth for
// everything but bytes (see DESIGN.md, "The store splits by engine").
// Badger (package cache) is the single-node engine of the same records.
// Store implements metastore.Store (meta.go, metauploads.go) and the auth
// stores (auth.go).
//
// Every call is bounded by Options.Timeout: with PostgreSQL down or hung
// a call fails promptly, with an error wrapping metastore.ErrUnavailable,
// instead of holding its request, and the pool reconnects by itself once
// the server is back.
package pgmeta

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DefaultTimeout bounds one call when Options.Timeout is zero.
const DefaultTimeout = 5 * time.Second

// Options of Open.
type Options struct {
	// DSN names the database, as a URL (postgres://user:pass@host/db) or
	// key=value pairs; pool settings such as pool_max_conns go here too.
	// sslmode=verify-full makes TLS with a checked certificate a must;
	// search_path=<schema> keeps the tables in a schema of their own.
	DSN string
	// Timeout bounds each call, connecting included. Zero is
	// DefaultTimeout.
	Timeout time.Duration
	// ApplicationName, if set, names the connections in
	// pg_stat_activity, whatever the DSN says. Without it they are named
	// by the DSN's application_name, or AppName. `caddy oci migrate`
	// sets its own, so that it can tell a running replica's connections
	// (ReplicaConnections) from its own.
	ApplicationName string
}

// AppName is the application_name of a replica's connections.
const AppName = "caddy-oci"

// Store is the metadata in one PostgreSQL database. It is safe for
// concurrent use, by any number of processes at once.
type Store struct {
	pool    resendingPool
	timeout time.Duration
	// life ends at Close: background work of the store's own (the
	// release a failed Acquire starts) stops with it.
	life context.Context
	end  context.CancelFunc
	// guesses is the login ledger's key and sweep time (guesses.go).
	guesses guessKeys
}

// ErrNameInvalid is an ID or name that cannot be a key: the metadata
// seam's, so callers test one error whichever record it was.
var ErrNameInvalid = metastore.ErrNameInvalid

// ErrUnavailable wraps the failures of PostgreSQL itself (down, hung,
// refusing): a caller answers 503 and retries later, as the pool
// reconnects by itself.
var ErrUnavailable = metastore.ErrUnavailable

// Open connects to the database and brings its schema up to date.
// Replicas may open the same database at once: migrations run one
// replica at a time, each exactly once. ctx bounds Open, the wait for
// another replica's migrations included; Options.Timeout does not, as a
// migration may rightly take longer than a call.
func Open(ctx context.Context, opts Options) (*Store, error) {
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	cfg, err := pgxpool.ParseConfig(opts.DSN)
	if err != nil {
		// pgx hides the password of a DSN it cannot parse only as well as
		// it can tell where the password is: say nothing of the DSN.
		return nil, errors.New("postgres: the DSN does not parse (not shown: it may hold a password)")
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok || opts.ApplicationName != "" {
		// Names this registry's sessions in pg_stat_activity.
		cfg.ConnConfig.RuntimeParams["application_name"] = cmp.Or(opts.ApplicationName, AppName)
	}
	if cfg.ConnConfig.ConnectTimeout == 0 || cfg.ConnConfig.ConnectTimeout > timeout {
		cfg.ConnConfig.ConnectTimeout = timeout
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	life, stop := context.WithCancel(context.Background())
	s := &Store{pool: resendingPool{pool}, timeout: timeout, life: life, end: stop}
	if err := migrate(ctx, pool, migrations); err != nil {
		stop()
		pool.Close()
		return nil, err
	}
	return s, nil
}

// ReplicaConnections counts the connections to this database named AppName:
// replicas serving from it. A migration, whose own connections carry
// another name (Options.ApplicationName), refuses to write into a
// database a replica serves from. It sees what pg_stat_activity shows
// this role; a replica whose DSN sets another application_name is not
// counted.
func (s *Store) ReplicaConnections(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return countReplicas(ctx, s.pool.QueryRow)
}

// ReplicaConnectionsAt is ReplicaConnections for the database at dsn,
// asked on a connection of its own named applicationName, before
// anything opens the database as a store (which applies the schema's
// migrations): a migration refuses a database replicas serve from before
// it changes anything there.
func ReplicaConnectionsAt(ctx context.Context, dsn, applicationName string) (int, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, fmt.Errorf("pgmeta: %w", err)
	}
	cfg.RuntimeParams["application_name"] = applicationName
	ctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, failed(context.Background(), "connect", err)
	}
	defer conn.Close(context.Background())
	return countReplicas(ctx, conn.QueryRow)
}

func countReplicas(ctx context.Context, queryRow func(context.Context, string, ...any) pgx.Row) (int, error) {
	var n int
	err := queryRow(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = $1`, AppName).Scan(&n)
	if err != nil {
		return 0, failed(context.Background(), "pg_stat_activity", err)
	}
	return n, nil
}

// Close closes the pool's connections.
func (s *Store) Close() {
	s.end()
	s.pool.Close()
}

// call bounds one store call.
func (s *Store) call() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), s.timeout)
}

// maxName bounds IDs and names: they are keys, not documents.
const maxName = 256

// checkName refuses what PostgreSQL's text cannot hold (NUL, invalid
// UTF-8) with a clear error of ours rather than the server's, and the
// empty or overlong names no caller makes.
func checkName(kind, name string) error {
	if name == "" || len(name) > maxName || !utf8.ValidString(name) || strings.ContainsRune(name, 0) {
		return fmt.Errorf("%w: %s %q", ErrNameInvalid, kind, name)
	}
	return nil
}

// CheckDSN reports whether dsn parses, without connecting, and without
// repeating it: a DSN may hold a password.
func CheckDSN(dsn string) error {
	if _, err := pgxpool.ParseConfig(dsn); err != nil {
		return errors.New("the DSN does not parse (not shown: it may hold a password)")
	}
	return nil
}
