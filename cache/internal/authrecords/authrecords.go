// Package authrecords keeps the auth layer's records in a badger
// database, as opaque bytes (authscope makes and reads them): API keys,
// sign-in sessions (badger forgets them at expiry) and random secrets made
// once and kept. Both stores that hold metadata in badger use it: the
// single-node store (package cache) and the embedded metadata of a split
// store (badgermeta). Each gives its own transactions, key prefixes, name
// check and not-found errors, so their keys and errors stay as they were.
package authrecords

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// Errors of creating a record whose id is taken.
var (
	ErrAPIKeyExists  = errors.New("API key exists")
	ErrSessionExists = errors.New("session exists")
)

// Records is the auth layer's records in one badger database.
type Records struct {
	// Update and View run fn in a read-write or read-only transaction.
	Update, View func(fn func(txn *badger.Txn) error) error
	// APIKeys, Sessions and Secrets prefix the keys of each kind; no
	// other key of the database may start with them.
	APIKeys, Sessions, Secrets string
	// CheckName refuses an id or secret name the keys cannot hold.
	CheckName func(kind, name string) error
	// APIKeyNotFound and SessionNotFound are wrapped when an id has no
	// (live) record.
	APIKeyNotFound, SessionNotFound error

	// apiKeyUpdates makes updates of API keys wait for each other: each
	// is a read-modify-write, and many at once (a key used by a CI fleet)
	// would otherwise fail on conflicts.
	apiKeyUpdates sync.Mutex
}

// CreateAPIKey stores a new API key record under id.
func (r *Records) CreateAPIKey(id string, record []byte) error {
	if err := r.CheckName("API key", id); err != nil {
		return err
	}
	return r.create(ErrAPIKeyExists, id, badger.NewEntry([]byte(r.APIKeys+id), record))
}

// APIKey returns the record of id, or an error wrapping APIKeyNotFound.
func (r *Records) APIKey(id string) ([]byte, error) {
	if err := r.CheckName("API key", id); err != nil {
		return nil, err
	}
	return r.get(id, []byte(r.APIKeys+id), r.APIKeyNotFound)
}

// UpdateAPIKey replaces the record of id by fn's result in one
// transaction. A missing id wraps APIKeyNotFound and fn is not called, so
// an update racing a revoke never brings the key back.
func (r *Records) UpdateAPIKey(id string, fn func(record []byte) ([]byte, error)) error {
	if err := r.CheckName("API key", id); err != nil {
		return err
	}
	r.apiKeyUpdates.Lock()
	defer r.apiKeyUpdates.Unlock()
	key := []byte(r.APIKeys + id)
	return r.Update(func(txn *badger.Txn) error {
		old, err := value(txn, id, key, r.APIKeyNotFound)
		if err != nil {
			return err
		}
		rec, err := fn(old)
		if err != nil {
			return err
		}
		return txn.Set(key, rec)
	})
}

// DeleteAPIKey removes id; a missing id is not an error.
func (r *Records) DeleteAPIKey(id string) error {
	if err := r.CheckName("API key", id); err != nil {
		return err
	}
	return r.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(r.APIKeys + id)) })
}

// AllAPIKeys returns every API key record.
func (r *Records) AllAPIKeys() ([][]byte, error) {
	var recs [][]byte
	err := r.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: []byte(r.APIKeys), PrefetchValues: true, PrefetchSize: 64})
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

// CreateSession stores a new session record under id, live until
// expires (badger drops it then).
func (r *Records) CreateSession(id string, record []byte, expires time.Time) error {
	if err := r.CheckName("session", id); err != nil {
		return err
	}
	if !expires.After(time.Now()) {
		return fmt.Errorf("session %s: expires in the past (%s)", id, expires.Format(time.RFC3339))
	}
	e := badger.NewEntry([]byte(r.Sessions+id), record)
	e.ExpiresAt = uint64(expires.Unix())
	return r.create(ErrSessionExists, id, e)
}

// Session returns the record of a live id, or an error wrapping
// SessionNotFound when it was never made, was deleted or has expired.
func (r *Records) Session(id string) ([]byte, error) {
	if err := r.CheckName("session", id); err != nil {
		return nil, err
	}
	return r.get(id, []byte(r.Sessions+id), r.SessionNotFound)
}

// DeleteSession removes id; a missing id is not an error.
func (r *Records) DeleteSession(id string) error {
	if err := r.CheckName("session", id); err != nil {
		return err
	}
	return r.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(r.Sessions + id)) })
}

// AuthSecret returns the secret called name, making a random one of size
// bytes the first time, so that what it seals (sessions) survives
// restarts. Concurrent first calls agree on one secret: the transaction
// that finds none and writes its own conflicts with any other doing the
// same, which then runs again and reads the winner's.
func (r *Records) AuthSecret(name string, size int) ([]byte, error) {
	if err := r.CheckName("secret", name); err != nil {
		return nil, err
	}
	if size <= 0 {
		return nil, fmt.Errorf("secret %s: size %d", name, size)
	}
	fresh := make([]byte, size)
	if _, err := rand.Read(fresh); err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	secret, _, err := r.ImportAuthSecret(name, fresh)
	if err != nil {
		return nil, err
	}
	if len(secret) != size {
		return nil, fmt.Errorf("secret %s: stored one has %d bytes, want %d", name, len(secret), size)
	}
	return secret, nil
}

// ImportAuthSecret stores secret as name unless a secret of that name
// exists, and returns the one stored and whether this call stored it:
// AuthSecret offers a fresh one this way, and a migration the key of the
// store it copies (so that the sessions it sealed stay signed in).
func (r *Records) ImportAuthSecret(name string, secret []byte) (stored []byte, created bool, err error) {
	if err := r.CheckName("secret", name); err != nil {
		return nil, false, err
	}
	if len(secret) == 0 {
		return nil, false, fmt.Errorf("secret %s: empty", name)
	}
	key := []byte(r.Secrets + name)
	err = r.Update(func(txn *badger.Txn) error {
		item, err := txn.Get(key)
		switch {
		case err == nil:
			created = false // a retried transaction may have set it
			stored, err = item.ValueCopy(nil)
			return err
		case errors.Is(err, badger.ErrKeyNotFound):
			stored, created = secret, true
			return txn.Set(key, secret)
		default:
			return err
		}
	})
	if err != nil {
		return nil, false, fmt.Errorf("secret %s: %w", name, err)
	}
	return stored, created, nil
}

// create sets e unless its key holds a record (then an error wrapping
// exists, naming id).
func (r *Records) create(exists error, id string, e *badger.Entry) error {
	return r.Update(func(txn *badger.Txn) error {
		_, err := txn.Get(e.Key)
		switch {
		case err == nil:
			return fmt.Errorf("%w: %s", exists, id)
		case !errors.Is(err, badger.ErrKeyNotFound):
			return err
		}
		return txn.SetEntry(e)
	})
}

func (r *Records) get(id string, key []byte, notFound error) ([]byte, error) {
	var rec []byte
	err := r.View(func(txn *badger.Txn) error {
		v, err := value(txn, id, key, notFound)
		rec = v
		return err
	})
	return rec, err
}

// value is key's value in txn, or an error wrapping notFound, naming id.
func value(txn *badger.Txn, id string, key []byte, notFound error) ([]byte, error) {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("%w: %s", notFound, id)
	}
	if err != nil {
		return nil, err
	}
	return item.ValueCopy(nil)
}
