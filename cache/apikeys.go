package cache

// Records of the auth layer: API keys, sign-in sessions and the secrets
// sessions are sealed with. The store keeps them as opaque bytes; what
// they mean is authscope's business (this package knows nothing of auth).
// authrecords does the work, as it does for badgermeta.
//
//	auth/apikey/<id>    -> API key record (JSON, made by authscope)
//	auth/session/<id>   -> session record; badger forgets it at expiry
//	auth/secret/<name>  -> random secret, made once and kept
//
// No other key starts with "auth/", so scans of the registry's prefixes
// never meet these.

import (
	"errors"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/caddy-oci/caddy-oci/cache/internal/authrecords"
)

// Key prefixes of auth records.
const (
	pAPIKey     = "auth/apikey/"
	pSession    = "auth/session/"
	pAuthSecret = "auth/secret/"
)

// Errors of auth records.
var (
	ErrAPIKeyUnknown  = errors.New("API key unknown")
	ErrAPIKeyExists   = authrecords.ErrAPIKeyExists
	ErrSessionUnknown = errors.New("session unknown")
	ErrSessionExists  = authrecords.ErrSessionExists
)

func newAuthRecords(s *Store) *authrecords.Records {
	return &authrecords.Records{
		Update:         s.update,
		View:           func(fn func(*badger.Txn) error) error { return s.db.View(fn) },
		APIKeys:        pAPIKey,
		Sessions:       pSession,
		Secrets:        pAuthSecret,
		CheckName:      checkName,
		APIKeyNotFound: ErrAPIKeyUnknown, SessionNotFound: ErrSessionUnknown,
	}
}

// CreateAPIKey stores a new API key record under id.
func (s *Store) CreateAPIKey(id string, record []byte) error { return s.auth.CreateAPIKey(id, record) }

// APIKey returns the record of id, or ErrAPIKeyUnknown.
func (s *Store) APIKey(id string) ([]byte, error) { return s.auth.APIKey(id) }

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction; a missing id is ErrAPIKeyUnknown and fn is not called.
func (s *Store) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	return s.auth.UpdateAPIKey(id, fn)
}

// DeleteAPIKey removes id; a missing id is not an error.
func (s *Store) DeleteAPIKey(id string) error { return s.auth.DeleteAPIKey(id) }

// APIKeys returns every API key record.
func (s *Store) APIKeys() ([][]byte, error) { return s.auth.AllAPIKeys() }

// CreateSession stores a new session record under id, until expires.
func (s *Store) CreateSession(id string, record []byte, expires time.Time) error {
	return s.auth.CreateSession(id, record, expires)
}

// Session returns the record of a live id, or ErrSessionUnknown when it
// was never made, was deleted or has expired.
func (s *Store) Session(id string) ([]byte, error) { return s.auth.Session(id) }

// DeleteSession removes id; a missing id is not an error.
func (s *Store) DeleteSession(id string) error { return s.auth.DeleteSession(id) }

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time, so that what it seals (sessions) survives
// restarts. Concurrent first calls agree on one secret.
func (s *Store) AuthSecret(name string, size int) ([]byte, error) {
	return s.auth.AuthSecret(name, size)
}
