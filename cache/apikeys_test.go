package cache

import (
	"bytes"
	"errors"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/authstoretest"
)

func TestAPIKeyRecords(t *testing.T) {
	s := openStore(t, Options{})
	if err := s.CreateAPIKey("a1", []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAPIKey("a1", []byte(`{"v":2}`)); !errors.Is(err, ErrAPIKeyExists) {
		t.Fatalf("second create: %v", err)
	}
	if err := s.CreateAPIKey("b2", []byte(`{"v":3}`)); err != nil {
		t.Fatal(err)
	}
	if rec, err := s.APIKey("a1"); err != nil || string(rec) != `{"v":1}` {
		t.Fatalf("get: %s %v", rec, err)
	}
	if err := s.UpdateAPIKey("a1", func(b []byte) ([]byte, error) { return append(b, '!'), nil }); err != nil {
		t.Fatal(err)
	}
	if rec, _ := s.APIKey("a1"); string(rec) != `{"v":1}!` {
		t.Fatalf("after update: %s", rec)
	}
	all, err := s.APIKeys()
	if err != nil || len(all) != 2 {
		t.Fatalf("list: %d %v", len(all), err)
	}
	if err := s.DeleteAPIKey("a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.APIKey("a1"); !errors.Is(err, ErrAPIKeyUnknown) {
		t.Fatalf("deleted: %v", err)
	}
	called := false
	if err := s.UpdateAPIKey("a1", func(b []byte) ([]byte, error) { called = true; return b, nil }); !errors.Is(err, ErrAPIKeyUnknown) || called {
		t.Fatalf("update of a deleted key: %v, fn called %v", err, called)
	}
	if err := s.DeleteAPIKey("a1"); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.APIKey("x\x00y"); !errors.Is(err, ErrNameInvalid) {
		t.Fatalf("NUL in id: %v", err)
	}
	// Auth records stay out of the registry's listings.
	if repos, _, err := s.Repositories(t.Context(), "", -1); err != nil || len(repos) != 0 {
		t.Fatalf("repositories: %v %v", repos, err)
	}
}

func TestAuthSecretPersists(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	a, err := s.AuthSecret("session", 32)
	if err != nil || len(a) != 32 {
		t.Fatalf("%x %v", a, err)
	}
	if b, _ := s.AuthSecret("session", 32); !bytes.Equal(a, b) {
		t.Fatal("secret changed")
	}
	if _, err := s.AuthSecret("session", 16); err == nil {
		t.Fatal("a secret of another size was accepted")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if b, _ := s.AuthSecret("session", 32); !bytes.Equal(a, b) {
		t.Fatal("secret lost across a restart")
	}
}

// TestSecretContract: the badger store keeps secrets as every backend
// must (authstoretest; pgmeta runs the same table). Its API keys and
// sessions run the contract in caddymodule, through the adapters that
// turn this package's errors into authscope's.
func TestSecretContract(t *testing.T) {
	authstoretest.Secrets(t, func(t *testing.T) authstoretest.SecretStore { return openStore(t, Options{}) })
}
