package pgmeta

// Records of the auth layer: API keys, signed-in sessions and the secrets
// sessions are sealed with, as opaque bytes (authscope makes and reads
// them). They satisfy authscope's store interfaces directly. With the
// server down their errors wrap metastore.ErrUnavailable, as the
// metadata's do.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/jackc/pgx/v5"
)

// Errors of auth records.
var (
	ErrAPIKeyExists  = errors.New("API key exists")
	ErrSessionExists = errors.New("session exists")
)

// CreateAPIKey stores a new API key record under id.
func (s *Store) CreateAPIKey(id string, record []byte) error {
	if err := checkName("API key", id); err != nil {
		return err
	}
	ctx, cancel := s.call()
	defer cancel()
	tag, err := s.execTx(ctx, "INSERT INTO api_keys (id, record) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING", id, record)
	if err != nil {
		return failed(context.Background(), "API key "+id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", ErrAPIKeyExists, id)
	}
	return nil
}

// APIKey returns the record of id, or an error wrapping
// authscope.ErrAPIKeyNotFound.
func (s *Store) APIKey(id string) ([]byte, error) {
	if err := checkName("API key", id); err != nil {
		return nil, err
	}
	ctx, cancel := s.call()
	defer cancel()
	var rec []byte
	err := s.pool.QueryRow(ctx, "SELECT record FROM api_keys WHERE id = $1", id).Scan(&rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", authscope.ErrAPIKeyNotFound, id)
	}
	if err != nil {
		return nil, failed(context.Background(), "API key "+id, err)
	}
	return rec, nil
}

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction that holds the row, so concurrent updates on any replica
// apply one after the other. A missing id wraps ErrAPIKeyNotFound and fn
// is not called, so an update racing a revoke never brings the key back.
func (s *Store) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	if err := checkName("API key", id); err != nil {
		return err
	}
	ctx, cancel := s.call()
	defer cancel()
	var missing bool
	var fnErr error // the caller's own error, returned unwrapped
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var old []byte
		err := tx.QueryRow(ctx, "SELECT record FROM api_keys WHERE id = $1 FOR UPDATE", id).Scan(&old)
		if errors.Is(err, pgx.ErrNoRows) {
			missing = true
			return nil
		}
		if err != nil {
			return err
		}
		rec, err := fn(old)
		if err != nil {
			fnErr = err
			return err
		}
		_, err = tx.Exec(ctx, "UPDATE api_keys SET record = $2 WHERE id = $1", id, rec)
		return err
	})
	switch {
	case fnErr != nil:
		return fnErr
	case err != nil:
		return failed(context.Background(), "API key "+id, err)
	case missing:
		return fmt.Errorf("%w: %s", authscope.ErrAPIKeyNotFound, id)
	}
	return nil
}

// DeleteAPIKey removes id; a missing id is not an error.
func (s *Store) DeleteAPIKey(id string) error {
	if err := checkName("API key", id); err != nil {
		return err
	}
	ctx, cancel := s.call()
	defer cancel()
	if _, err := s.execTx(ctx, "DELETE FROM api_keys WHERE id = $1", id); err != nil {
		return failed(context.Background(), "API key "+id, err)
	}
	return nil
}

// APIKeys returns every API key record.
func (s *Store) APIKeys() ([][]byte, error) {
	ctx, cancel := s.call()
	defer cancel()
	rows, _ := s.pool.Query(ctx, "SELECT record FROM api_keys ORDER BY id")
	recs, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return nil, failed(context.Background(), "API keys", err)
	}
	return recs, nil
}

// sweepSessions bounds how many expired sessions one sign-in removes, so
// that the table does not grow with sessions nobody signs out of, and no
// sign-in pays for a long backlog.
const sweepSessions = 100

// CreateSession stores a new session record under id, live until
// expires, and removes some expired ones.
func (s *Store) CreateSession(id string, record []byte, expires time.Time) error {
	if err := checkName("session", id); err != nil {
		return err
	}
	if !expires.After(time.Now()) {
		return fmt.Errorf("session %s: expires in the past (%s)", id, expires.Format(time.RFC3339))
	}
	ctx, cancel := s.call()
	defer cancel()
	tag, err := s.execTx(ctx, "INSERT INTO sessions (id, record, expires) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING", id, record, expires)
	if err != nil {
		return failed(context.Background(), "session "+id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: %s", ErrSessionExists, id)
	}
	// Best effort: an expired session reads as none whether or not its
	// row is gone, and the next sign-in sweeps again.
	_, _ = s.pool.Exec(ctx, `DELETE FROM sessions WHERE id IN (
		SELECT id FROM sessions WHERE expires <= now() LIMIT $1 FOR UPDATE SKIP LOCKED)`, sweepSessions)
	return nil
}

// Session returns the record of a live id, or an error wrapping
// authscope.ErrSessionNotFound when it was never made, was deleted or has
// expired. Expiry is judged by the database's clock, one clock for every
// replica.
func (s *Store) Session(id string) ([]byte, error) {
	if err := checkName("session", id); err != nil {
		return nil, err
	}
	ctx, cancel := s.call()
	defer cancel()
	var rec []byte
	err := s.pool.QueryRow(ctx, "SELECT record FROM sessions WHERE id = $1 AND expires > now()", id).Scan(&rec)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("%w: %s", authscope.ErrSessionNotFound, id)
	}
	if err != nil {
		return nil, failed(context.Background(), "session "+id, err)
	}
	return rec, nil
}

// DeleteSession removes id; a missing id is not an error.
func (s *Store) DeleteSession(id string) error {
	if err := checkName("session", id); err != nil {
		return err
	}
	ctx, cancel := s.call()
	defer cancel()
	if _, err := s.execTx(ctx, "DELETE FROM sessions WHERE id = $1", id); err != nil {
		return failed(context.Background(), "session "+id, err)
	}
	return nil
}

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time. Replicas calling it at once agree on one secret:
// each offers its own, the first insert wins, and all read the winner.
func (s *Store) AuthSecret(name string, size int) ([]byte, error) {
	if err := checkName("secret", name); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, fmt.Errorf("secret %s: size %d", name, size)
	}
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	ctx, cancel := s.call()
	defer cancel()
	secret, err := s.offerSecret(ctx, name, fresh)
	if err != nil {
		return nil, failed(context.Background(), "secret "+name, err)
	}
	if len(secret) != size {
		return nil, fmt.Errorf("secret %s: stored one has %d bytes, want %d", name, len(secret), size)
	}
	return secret, nil
}

// ImportAuthSecret stores secret as name unless a secret of that name
// exists, and returns the one stored and whether it was this call that
// stored it: a migration brings the session key of a single-node store,
// so that its sessions stay signed in. A caller that gets back other
// bytes than it offered finds the database had a key already (a replica
// started before the migration).
func (s *Store) ImportAuthSecret(name string, secret []byte) (stored []byte, created bool, err error) {
	if err := checkName("secret", name); err != nil {
		return nil, false, err
	}
	if len(secret) == 0 {
		return nil, false, fmt.Errorf("secret %s: empty", name)
	}
	ctx, cancel := s.call()
	defer cancel()
	tag, err := s.pool.Exec(ctx, "INSERT INTO auth_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, secret)
	if err == nil {
		err = s.pool.QueryRow(ctx, "SELECT secret FROM auth_secrets WHERE name = $1", name).Scan(&stored)
	}
	if err != nil {
		return nil, false, failed(context.Background(), "secret "+name, err)
	}
	return stored, tag.RowsAffected() == 1, nil
}

// offerSecret stores fresh as name unless a secret of that name exists,
// and returns the one stored. Two statements, not one: the SELECT must
// run on a snapshot taken after the INSERT, which waits for a concurrent
// insert of the same name to commit, so that it sees the winner's row.
func (s *Store) offerSecret(ctx context.Context, name string, fresh []byte) ([]byte, error) {
	if _, err := s.pool.Exec(ctx, "INSERT INTO auth_secrets (name, secret) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, fresh); err != nil {
		return nil, err
	}
	var secret []byte
	err := s.pool.QueryRow(ctx, "SELECT secret FROM auth_secrets WHERE name = $1", name).Scan(&secret)
	return secret, err
}

var (
	_ authscope.APIKeyStore  = (*Store)(nil)
	_ authscope.SessionStore = (*Store)(nil)
)
