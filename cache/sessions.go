package cache

// Sign-in sessions of the auth layer, as opaque records that badger
// forgets when they expire:
//
//	auth/session/<id>  -> session record (JSON, made by authscope)

import (
	"errors"
	"fmt"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

const pSession = "auth/session/"

// Errors of sessions.
var (
	ErrSessionUnknown = errors.New("session unknown")
	ErrSessionExists  = errors.New("session exists")
)

func sessionKey(id string) []byte { return []byte(pSession + id) }

// CreateSession stores a new session record under id, until expires.
func (s *Store) CreateSession(id string, record []byte, expires time.Time) error {
	if err := checkName("session", id); err != nil {
		return err
	}
	if !expires.After(time.Now()) {
		return fmt.Errorf("session %s: expires in the past (%s)", id, expires.Format(time.RFC3339))
	}
	return s.update(func(txn *badger.Txn) error {
		ok, err := exists(txn, sessionKey(id))
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

// Session returns the record of a live id, or ErrSessionUnknown when it
// was never made, was deleted or has expired.
func (s *Store) Session(id string) ([]byte, error) {
	if err := checkName("session", id); err != nil {
		return nil, err
	}
	var rec []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(sessionKey(id))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return fmt.Errorf("%w: %s", ErrSessionUnknown, id)
		}
		if err != nil {
			return err
		}
		rec, err = item.ValueCopy(nil)
		return err
	})
	return rec, err
}

// DeleteSession removes id; a missing id is not an error.
func (s *Store) DeleteSession(id string) error {
	if err := checkName("session", id); err != nil {
		return err
	}
	return s.update(func(txn *badger.Txn) error { return txn.Delete(sessionKey(id)) })
}
