package badgermeta

// Records of the auth layer, as opaque bytes (authscope makes and reads
// them), so that a single node on S3 with the embedded metadata keeps API
// keys and sign-in sessions as PostgreSQL does for replicas. They satisfy
// authscope's store interfaces directly, as pgmeta's do.
//
//	a/key/<id>       API key record
//	a/session/<id>   sign-in session record; badger forgets it at expiry
//	a/secret/<name>  random secret, made once and kept
//
// No other key starts with "a/".

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
)

// Errors of auth records.
var (
	ErrAPIKeyExists  = errors.New("API key exists")
	ErrSessionExists = errors.New("session exists")
)

func apiKeyKey(id string) []byte   { return []byte("a/key/" + id) }
func sessionKey(id string) []byte  { return []byte("a/session/" + id) }
func secretKey(name string) []byte { return []byte("a/secret/" + name) }

// apiKeyUpdates serialises updates of API keys across Stores of a
// process: each is a read-modify-write, and many at once (a key used by
// a CI fleet) would otherwise run again and again on conflicts.
var apiKeyUpdates sync.Mutex

// CreateAPIKey stores a new API key record under id.
func (s *Store) CreateAPIKey(id string, record []byte) error {
	if err := metastore.CheckName("API key", id); err != nil {
		return err
	}
	return s.update(context.Background(), func(txn *badger.Txn) error {
		ok, err := has(txn, apiKeyKey(id))
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%w: %s", ErrAPIKeyExists, id)
		}
		return txn.Set(apiKeyKey(id), record)
	})
}

// APIKey returns the record of id, or an error wrapping
// authscope.ErrAPIKeyNotFound.
func (s *Store) APIKey(id string) ([]byte, error) {
	if err := metastore.CheckName("API key", id); err != nil {
		return nil, err
	}
	var rec []byte
	err := s.view(context.Background(), func(txn *badger.Txn) error {
		v, ok, err := get(txn, apiKeyKey(id))
		if err == nil && !ok {
			err = fmt.Errorf("%w: %s", authscope.ErrAPIKeyNotFound, id)
		}
		rec = v
		return err
	})
	return rec, err
}

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction. A missing id wraps ErrAPIKeyNotFound and fn is not
// called, so an update racing a revoke never brings the key back.
func (s *Store) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	if err := metastore.CheckName("API key", id); err != nil {
		return err
	}
	apiKeyUpdates.Lock()
	defer apiKeyUpdates.Unlock()
	return s.update(context.Background(), func(txn *badger.Txn) error {
		old, ok, err := get(txn, apiKeyKey(id))
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: %s", authscope.ErrAPIKeyNotFound, id)
		}
		rec, err := fn(old)
		if err != nil {
			return err
		}
		return txn.Set(apiKeyKey(id), rec)
	})
}

// DeleteAPIKey removes id; a missing id is not an error.
func (s *Store) DeleteAPIKey(id string) error {
	if err := metastore.CheckName("API key", id); err != nil {
		return err
	}
	return s.update(context.Background(), func(txn *badger.Txn) error { return txn.Delete(apiKeyKey(id)) })
}

// APIKeys returns every API key record.
func (s *Store) APIKeys() ([][]byte, error) {
	var recs [][]byte
	err := s.view(context.Background(), func(txn *badger.Txn) error {
		return each(txn, []byte("a/key/"), "", func(_ string, v []byte) (bool, error) {
			recs = append(recs, v)
			return true, nil
		})
	})
	return recs, err
}

// CreateSession stores a new session record under id, live until
// expires (badger drops it then).
func (s *Store) CreateSession(id string, record []byte, expires time.Time) error {
	if err := metastore.CheckName("session", id); err != nil {
		return err
	}
	if !expires.After(time.Now()) {
		return fmt.Errorf("session %s: expires in the past (%s)", id, expires.Format(time.RFC3339))
	}
	return s.update(context.Background(), func(txn *badger.Txn) error {
		ok, err := has(txn, sessionKey(id))
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%w: %s", ErrSessionExists, id)
		}
		e := badger.NewEntry(sessionKey(id), record)
		e.ExpiresAt = uint64(expires.Unix())
		return txn.SetEntry(e)
	})
}

// Session returns the record of a live id, or an error wrapping
// authscope.ErrSessionNotFound when it was never made, was deleted or has
// expired.
func (s *Store) Session(id string) ([]byte, error) {
	if err := metastore.CheckName("session", id); err != nil {
		return nil, err
	}
	var rec []byte
	err := s.view(context.Background(), func(txn *badger.Txn) error {
		v, ok, err := get(txn, sessionKey(id))
		if err == nil && !ok {
			err = fmt.Errorf("%w: %s", authscope.ErrSessionNotFound, id)
		}
		rec = v
		return err
	})
	return rec, err
}

// DeleteSession removes id; a missing id is not an error.
func (s *Store) DeleteSession(id string) error {
	if err := metastore.CheckName("session", id); err != nil {
		return err
	}
	return s.update(context.Background(), func(txn *badger.Txn) error { return txn.Delete(sessionKey(id)) })
}

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time, so that what it seals (sessions) survives
// restarts. Concurrent first calls agree on one secret: the transaction
// that finds none and writes its own conflicts with any other doing the
// same, which then runs again and reads the winner's.
func (s *Store) AuthSecret(name string, size int) ([]byte, error) {
	if err := metastore.CheckName("secret", name); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, fmt.Errorf("secret %s: size %d", name, size)
	}
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	var secret []byte
	err := s.update(context.Background(), func(txn *badger.Txn) error {
		v, ok, err := get(txn, secretKey(name))
		if err != nil || ok {
			secret = v
			return err
		}
		secret = fresh
		return txn.Set(secretKey(name), fresh)
	})
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	if len(secret) != size {
		return nil, fmt.Errorf("secret %s: stored one has %d bytes, want %d", name, len(secret), size)
	}
	return secret, nil
}

var (
	_ authscope.APIKeyStore  = (*Store)(nil)
	_ authscope.SessionStore = (*Store)(nil)
)
