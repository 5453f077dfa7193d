package cache

import (
	"errors"
	"testing"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

func TestSessionRecords(t *testing.T) {
	s := openStore(t, Options{})
	exp := time.Now().Add(time.Hour)
	if err := s.CreateSession("s1", []byte(`{"u":1}`), exp); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession("s1", []byte(`{"u":2}`), exp); !errors.Is(err, ErrSessionExists) {
		t.Fatalf("second create: %v", err)
	}
	if rec, err := s.Session("s1"); err != nil || string(rec) != `{"u":1}` {
		t.Fatalf("get: %s %v", rec, err)
	}
	// Badger forgets the record when the session expires.
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(pSession + "s1"))
		if err == nil && item.ExpiresAt() != uint64(exp.Unix()) {
			t.Errorf("expires at %d, want %d", item.ExpiresAt(), exp.Unix())
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession("old", []byte(`{}`), time.Now().Add(-time.Second)); err == nil {
		t.Fatal("a session that has already expired was stored")
	}
	if _, err := s.Session("never"); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("unknown: %v", err)
	}
	if err := s.DeleteSession("s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session("s1"); !errors.Is(err, ErrSessionUnknown) {
		t.Fatalf("deleted: %v", err)
	}
	if err := s.DeleteSession("s1"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.Session("x\x00y"); !errors.Is(err, ErrNameInvalid) {
		t.Fatalf("NUL in id: %v", err)
	}
	if repos, _, err := s.Repositories(t.Context(), "", -1); err != nil || len(repos) != 0 {
		t.Fatalf("repositories: %v %v", repos, err)
	}
}

// TestSessionExpires: an expired session reads as unknown. Badger counts
// expiry in whole seconds of the real clock, hence the wait.
func TestSessionExpires(t *testing.T) {
	s := openStore(t, Options{})
	if err := s.CreateSession("brief", []byte(`{}`), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := s.Session("brief")
		if errors.Is(err, ErrSessionUnknown) {
			return
		}
		if err != nil || time.Now().After(deadline) {
			t.Fatalf("session still there after its expiry: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSessionPersists: a session outlives a restart, as its sealed cookie
// does.
func TestSessionPersists(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession("s1", []byte(`{}`), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Session("s1"); err != nil {
		t.Fatalf("after a restart: %v", err)
	}
}
