package cache

// Records of the auth layer: API keys and the secrets sessions are sealed
// with. The store keeps them as opaque bytes; what they mean is
// authscope's business (this package knows nothing of auth).
//
//	auth/apikey/<id>    -> API key record (JSON, made by authscope)
//	auth/secret/<name>  -> random secret, made once and kept
//
// No other key starts with "auth/", so scans of the registry's prefixes
// never meet these.

import (
	"crypto/rand"
	"errors"
	"fmt"

	badger "github.com/dgraph-io/badger/v4"
)

const (
	pAPIKey     = "auth/apikey/"
	pAuthSecret = "auth/secret/"
)

// Errors of auth records.
var (
	ErrAPIKeyUnknown = errors.New("API key unknown")
	ErrAPIKeyExists  = errors.New("API key exists")
)

func apiKeyKey(id string) []byte { return []byte(pAPIKey + id) }

// CreateAPIKey stores a new API key record under id.
func (s *Store) CreateAPIKey(id string, record []byte) error {
	if err := checkName("API key", id); err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error {
		ok, err := exists(txn, apiKeyKey(id))
		if err != nil {
			return err
		}
		if ok {
			return fmt.Errorf("%w: %s", ErrAPIKeyExists, id)
		}
		return txn.Set(apiKeyKey(id), record)
	})
}

// APIKey returns the record of id, or ErrAPIKeyUnknown.
func (s *Store) APIKey(id string) ([]byte, error) {
	if err := checkName("API key", id); err != nil {
		return nil, err
	}
	var rec []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(apiKeyKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %s", ErrAPIKeyUnknown, id)
		}
		if err != nil {
			return err
		}
		rec, err = item.ValueCopy(nil)
		return err
	})
	return rec, err
}

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction. A missing id is ErrAPIKeyUnknown and fn is not called, so
// an update racing a revoke never brings the key back. Updates of keys
// wait for each other: each is a read-modify-write, and many at once (a
// key used by a CI fleet) would otherwise fail on conflicts.
func (s *Store) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	if err := checkName("API key", id); err != nil {
		return err
	}
	s.apiKeyMu.Lock()
	defer s.apiKeyMu.Unlock()
	return s.update(func(txn *badger.Txn) error {
		item, err := txn.Get(apiKeyKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %s", ErrAPIKeyUnknown, id)
		}
		if err != nil {
			return err
		}
		old, err := item.ValueCopy(nil)
		if err != nil {
			return err
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
	if err := checkName("API key", id); err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error { return txn.Delete(apiKeyKey(id)) })
}

// APIKeys returns every API key record.
func (s *Store) APIKeys() ([][]byte, error) {
	var recs [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(pAPIKey), PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			recs = append(recs, v)
		}
		return nil
	})
	return recs, err
}

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time, so that what it seals (sessions) survives
// restarts. Concurrent first calls agree on one secret.
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
	key := []byte(pAuthSecret + name)
	var secret []byte
	err := s.update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		switch {
		case err == nil:
			secret, err = item.ValueCopy(nil)
			return err
		case errors.Is(err, badger.ErrKeyNotFound):
			secret = fresh
			return txn.Set(key, fresh)
		default:
			return err
		}
	})
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	if len(secret) != size {
		return nil, fmt.Errorf("secret %s: stored one has %d bytes, want %d", name, len(secret), size)
	}
	return secret, nil
}
