package badgermeta

// Records of the auth layer, as opaque bytes (authscope makes and reads
// them), so that a single node on S3 with the embedded metadata keeps API
// keys and sign-in sessions as PostgreSQL does for replicas. They satisfy
// authscope's store interfaces directly, as pgmeta's do. authrecords does
// the work, as it does for the single-node store.
//
//	a/key/<id>       API key record
//	a/session/<id>   sign-in session record; badger forgets it at expiry
//	a/secret/<name>  random secret, made once and kept
//
// No other key starts with "a/".

import (
	"context"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache/internal/authrecords"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Errors of auth records.
var (
	ErrAPIKeyExists  = authrecords.ErrAPIKeyExists
	ErrSessionExists = authrecords.ErrSessionExists
)

func newAuthRecords(s *Store) *authrecords.Records {
	return &authrecords.Records{
		Update:         func(fn func(*badger.Txn) error) error { return s.update(context.Background(), fn) },
		View:           func(fn func(*badger.Txn) error) error { return s.view(context.Background(), fn) },
		APIKeys:        "a/key/",
		Sessions:       "a/session/",
		Secrets:        "a/secret/",
		CheckName:      metastore.CheckName,
		APIKeyNotFound: authscope.ErrAPIKeyNotFound, SessionNotFound: authscope.ErrSessionNotFound,
	}
}

// CreateAPIKey stores a new API key record under id.
func (s *Store) CreateAPIKey(id string, record []byte) error { return s.auth.CreateAPIKey(id, record) }

// APIKey returns the record of id, or an error wrapping
// authscope.ErrAPIKeyNotFound.
func (s *Store) APIKey(id string) ([]byte, error) { return s.auth.APIKey(id) }

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction; a missing id wraps ErrAPIKeyNotFound and fn is not called.
func (s *Store) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	return s.auth.UpdateAPIKey(id, fn)
}

// DeleteAPIKey removes id; a missing id is not an error.
func (s *Store) DeleteAPIKey(id string) error { return s.auth.DeleteAPIKey(id) }

// APIKeys returns every API key record.
func (s *Store) APIKeys() ([][]byte, error) { return s.auth.AllAPIKeys() }

// CreateSession stores a new session record under id, live until
// expires (badger drops it then).
func (s *Store) CreateSession(id string, record []byte, expires time.Time) error {
	return s.auth.CreateSession(id, record, expires)
}

// Session returns the record of a live id, or an error wrapping
// authscope.ErrSessionNotFound when it was never made, was deleted or has
// expired.
func (s *Store) Session(id string) ([]byte, error) { return s.auth.Session(id) }

// DeleteSession removes id; a missing id is not an error.
func (s *Store) DeleteSession(id string) error { return s.auth.DeleteSession(id) }

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time, so that what it seals (sessions) survives
// restarts. Concurrent first calls agree on one secret.
func (s *Store) AuthSecret(name string, size int) ([]byte, error) {
	return s.auth.AuthSecret(name, size)
}

// ImportAuthSecret stores secret as name unless a secret of that name
// exists, and returns the one stored and whether this call stored it: a
// migration brings the session key of the storage folder it copies.
func (s *Store) ImportAuthSecret(name string, secret []byte) (stored []byte, created bool, err error) {
	return s.auth.ImportAuthSecret(name, secret)
}

var (
	_ authscope.APIKeyStore  = (*Store)(nil)
	_ authscope.SessionStore = (*Store)(nil)
)
