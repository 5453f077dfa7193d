// Package authstoretest is the contract of the auth layer's stores: one
// table of tests that every backend (badger, PostgreSQL) runs against
// itself, with the same assertions, so that a backend proves itself by
// passing it.
package authstoretest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// SecretStore keeps secrets made once, such as the key sessions are
// sealed with.
type SecretStore interface {
	// AuthSecret returns the secret called name, making a random one of
	// size bytes the first time; concurrent first calls agree on one.
	AuthSecret(name string, size int) ([]byte, error)
}

// badID cannot be a key in any backend.
const badID = "x\x00y"

// opaque is a record no backend may read as text: NUL, invalid UTF-8.
var opaque = []byte{'{', 0, 0xff, 0xfe, '}'}

// APIKeys runs the contract of authscope.APIKeyStore. newStore returns an
// empty store, one per subtest.
func APIKeys(t *testing.T, newStore func(t *testing.T) authscope.APIKeyStore) {
	tests := []struct {
		name string
		run  func(t *testing.T, s authscope.APIKeyStore)
	}{
		{"create then read byte for byte", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "a1", opaque)
			if rec, err := s.APIKey("a1"); err != nil || !bytes.Equal(rec, opaque) {
				t.Fatalf("APIKey = %q, %v; want %q", rec, err, opaque)
			}
		}},
		{"create of an existing id fails and keeps the first", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "a1", []byte("first"))
			if err := s.CreateAPIKey("a1", []byte("second")); err == nil {
				t.Fatal("second create of a1 succeeded")
			}
			if rec, _ := s.APIKey("a1"); string(rec) != "first" {
				t.Fatalf("record = %q, want first", rec)
			}
		}},
		{"unknown id is not found", func(t *testing.T, s authscope.APIKeyStore) {
			if _, err := s.APIKey("nope"); !errors.Is(err, authscope.ErrAPIKeyNotFound) {
				t.Fatalf("APIKey(nope) = %v, want ErrAPIKeyNotFound", err)
			}
		}},
		{"update replaces the record", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "a1", []byte("v1"))
			if err := s.UpdateAPIKey("a1", func(b []byte) ([]byte, error) { return append(b, '!'), nil }); err != nil {
				t.Fatal(err)
			}
			if rec, _ := s.APIKey("a1"); string(rec) != "v1!" {
				t.Fatalf("record = %q, want v1!", rec)
			}
		}},
		{"update of an unknown id is not found and does not call fn", func(t *testing.T, s authscope.APIKeyStore) {
			called := false
			err := s.UpdateAPIKey("nope", func(b []byte) ([]byte, error) { called = true; return b, nil })
			if !errors.Is(err, authscope.ErrAPIKeyNotFound) || called {
				t.Fatalf("UpdateAPIKey(nope) = %v, fn called %v", err, called)
			}
			if _, err := s.APIKey("nope"); !errors.Is(err, authscope.ErrAPIKeyNotFound) {
				t.Fatalf("update made the key: %v", err)
			}
		}},
		{"update whose fn fails returns its error and changes nothing", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "a1", []byte("v1"))
			boom := errors.New("boom")
			err := s.UpdateAPIKey("a1", func([]byte) ([]byte, error) { return []byte("v2"), boom })
			if !errors.Is(err, boom) {
				t.Fatalf("UpdateAPIKey = %v, want fn's error", err)
			}
			if rec, _ := s.APIKey("a1"); string(rec) != "v1" {
				t.Fatalf("record = %q, want v1", rec)
			}
		}},
		{"delete removes, and deleting again is no error", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "a1", []byte("v1"))
			mustCreateKey(t, s, "b2", []byte("v2"))
			for range 2 {
				if err := s.DeleteAPIKey("a1"); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.APIKey("a1"); !errors.Is(err, authscope.ErrAPIKeyNotFound) {
				t.Fatalf("deleted key: %v", err)
			}
			if rec, err := s.APIKey("b2"); err != nil || string(rec) != "v2" {
				t.Fatalf("other key: %q %v", rec, err)
			}
		}},
		{"list returns every record", func(t *testing.T, s authscope.APIKeyStore) {
			if all, err := s.APIKeys(); err != nil || len(all) != 0 {
				t.Fatalf("empty store lists %q, %v", all, err)
			}
			want := []string{"r1", "r2", "r3"}
			for i, r := range want {
				mustCreateKey(t, s, fmt.Sprintf("k%d", i), []byte(r))
			}
			all, err := s.APIKeys()
			if err != nil {
				t.Fatal(err)
			}
			got := make([]string, len(all))
			for i, b := range all {
				got[i] = string(b)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Fatalf("APIKeys = %q, want %q", got, want)
			}
		}},
		{"an id that cannot be a key is refused", func(t *testing.T, s authscope.APIKeyStore) {
			errs := map[string]error{
				"create": s.CreateAPIKey(badID, []byte("v")),
				"update": s.UpdateAPIKey(badID, func(b []byte) ([]byte, error) { return b, nil }),
				"delete": s.DeleteAPIKey(badID),
			}
			_, errs["read"] = s.APIKey(badID)
			_, errs["empty"] = s.APIKey("")
			for op, err := range errs {
				if err == nil {
					t.Errorf("%s of %q succeeded", op, badID)
				}
			}
			if all, _ := s.APIKeys(); len(all) != 0 {
				t.Fatalf("a refused id was stored: %q", all)
			}
		}},
		{"a sign-in's groups replace those of the user's keys, and only theirs", func(t *testing.T, s authscope.APIKeyStore) {
			now := time.Now()
			keys := &authscope.APIKeys{Store: s, GroupsMaxAge: time.Hour, Now: func() time.Time { return now }}
			alice1, _, err := keys.Create("alice", []string{"devs", "ops"}, "", 0)
			if err != nil {
				t.Fatal(err)
			}
			alice2, _, _ := keys.Create("alice", []string{"devs"}, "", 0)
			bob, _, _ := keys.Create("bob", []string{"ops"}, "", 0)
			now = now.Add(2 * time.Hour) // every key's groups lapsed
			if err := keys.RefreshGroups("alice", []string{"devs"}); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string][]string{alice1: {"devs"}, alice2: {"devs"}, bob: nil} {
				rec, err := keys.Verify(key)
				if err != nil {
					t.Fatal(err)
				}
				if got := keys.Groups(rec, now); !slices.Equal(got, want) {
					t.Errorf("%s's key: groups %q, want %q", rec.User, got, want)
				}
			}
		}},
		{"concurrent updates lose nothing", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "n", []byte("0"))
			const workers, each = 4, 25
			var wg sync.WaitGroup
			errs := make(chan error, workers*each)
			for range workers {
				wg.Go(func() {
					for range each {
						errs <- s.UpdateAPIKey("n", increment)
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("update: %v", err)
				}
			}
			if rec, _ := s.APIKey("n"); string(rec) != strconv.Itoa(workers*each) {
				t.Fatalf("counter = %s after %d increments", rec, workers*each)
			}
		}},
		{"an update racing a delete never brings the key back", func(t *testing.T, s authscope.APIKeyStore) {
			mustCreateKey(t, s, "n", []byte("0"))
			var wg sync.WaitGroup
			for range 4 {
				wg.Go(func() {
					for range 10 {
						err := s.UpdateAPIKey("n", increment)
						if err != nil && !errors.Is(err, authscope.ErrAPIKeyNotFound) {
							t.Errorf("update: %v", err)
						}
					}
				})
			}
			wg.Go(func() {
				if err := s.DeleteAPIKey("n"); err != nil {
					t.Errorf("delete: %v", err)
				}
			})
			wg.Wait()
			if rec, err := s.APIKey("n"); !errors.Is(err, authscope.ErrAPIKeyNotFound) {
				t.Fatalf("after delete: %q, %v", rec, err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore(t)) })
	}
}

// increment adds one to a decimal record.
func increment(b []byte) ([]byte, error) {
	n, err := strconv.Atoi(string(b))
	if err != nil {
		return nil, err
	}
	return []byte(strconv.Itoa(n + 1)), nil
}

func mustCreateKey(t *testing.T, s authscope.APIKeyStore, id string, rec []byte) {
	t.Helper()
	if err := s.CreateAPIKey(id, rec); err != nil {
		t.Fatalf("CreateAPIKey(%s): %v", id, err)
	}
}

// Sessions runs the contract of authscope.SessionStore. newStore returns
// an empty store, one per subtest.
func Sessions(t *testing.T, newStore func(t *testing.T) authscope.SessionStore) {
	hour := time.Now().Add(time.Hour)
	tests := []struct {
		name string
		run  func(t *testing.T, s authscope.SessionStore)
	}{
		{"create then read byte for byte", func(t *testing.T, s authscope.SessionStore) {
			mustCreateSession(t, s, "s1", opaque, hour)
			if rec, err := s.Session("s1"); err != nil || !bytes.Equal(rec, opaque) {
				t.Fatalf("Session = %q, %v; want %q", rec, err, opaque)
			}
		}},
		{"create of an existing id fails and keeps the first", func(t *testing.T, s authscope.SessionStore) {
			mustCreateSession(t, s, "s1", []byte("first"), hour)
			if err := s.CreateSession("s1", []byte("second"), hour); err == nil {
				t.Fatal("second create of s1 succeeded")
			}
			if rec, _ := s.Session("s1"); string(rec) != "first" {
				t.Fatalf("record = %q, want first", rec)
			}
		}},
		{"unknown id is not found", func(t *testing.T, s authscope.SessionStore) {
			if _, err := s.Session("nope"); !errors.Is(err, authscope.ErrSessionNotFound) {
				t.Fatalf("Session(nope) = %v, want ErrSessionNotFound", err)
			}
		}},
		{"delete ends it, and deleting again is no error", func(t *testing.T, s authscope.SessionStore) {
			mustCreateSession(t, s, "s1", []byte("v1"), hour)
			mustCreateSession(t, s, "s2", []byte("v2"), hour)
			for range 2 {
				if err := s.DeleteSession("s1"); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := s.Session("s1"); !errors.Is(err, authscope.ErrSessionNotFound) {
				t.Fatalf("deleted session: %v", err)
			}
			if rec, err := s.Session("s2"); err != nil || string(rec) != "v2" {
				t.Fatalf("other session: %q %v", rec, err)
			}
		}},
		{"a session already expired is refused", func(t *testing.T, s authscope.SessionStore) {
			if err := s.CreateSession("old", []byte("v"), time.Now().Add(-time.Second)); err == nil {
				t.Fatal("an expired session was stored")
			}
			if _, err := s.Session("old"); !errors.Is(err, authscope.ErrSessionNotFound) {
				t.Fatalf("expired session: %v", err)
			}
		}},
		{"a session is not found once expired", func(t *testing.T, s authscope.SessionStore) {
			// Badger counts expiry in whole seconds of the real clock,
			// hence a real wait, polled.
			mustCreateSession(t, s, "brief", []byte("v"), time.Now().Add(1500*time.Millisecond))
			if _, err := s.Session("brief"); err != nil {
				t.Fatalf("live session: %v", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				_, err := s.Session("brief")
				if errors.Is(err, authscope.ErrSessionNotFound) {
					break
				}
				if err != nil || time.Now().After(deadline) {
					t.Fatalf("session still there after its expiry: %v", err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if rec, err := s.Session("long"); err == nil {
				t.Fatalf("unrelated session appeared: %q", rec)
			}
		}},
		{"an id that cannot be a key is refused", func(t *testing.T, s authscope.SessionStore) {
			errs := map[string]error{
				"create": s.CreateSession(badID, []byte("v"), hour),
				"delete": s.DeleteSession(badID),
			}
			_, errs["read"] = s.Session(badID)
			_, errs["empty"] = s.Session("")
			for op, err := range errs {
				if err == nil {
					t.Errorf("%s of %q succeeded", op, badID)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore(t)) })
	}
}

func mustCreateSession(t *testing.T, s authscope.SessionStore, id string, rec []byte, expires time.Time) {
	t.Helper()
	if err := s.CreateSession(id, rec, expires); err != nil {
		t.Fatalf("CreateSession(%s): %v", id, err)
	}
}

// Secrets runs the contract of SecretStore. newStore returns an empty
// store, one per subtest.
func Secrets(t *testing.T, newStore func(t *testing.T) SecretStore) {
	tests := []struct {
		name string
		run  func(t *testing.T, s SecretStore)
	}{
		{"made once, then the same", func(t *testing.T, s SecretStore) {
			a := mustSecret(t, s, "session", 32)
			if b := mustSecret(t, s, "session", 32); !bytes.Equal(a, b) {
				t.Fatal("secret changed")
			}
			if bytes.Equal(a, make([]byte, 32)) {
				t.Fatal("secret is all zeros")
			}
		}},
		{"names are apart", func(t *testing.T, s SecretStore) {
			if a, b := mustSecret(t, s, "one", 32), mustSecret(t, s, "two", 32); bytes.Equal(a, b) {
				t.Fatal("two names share a secret")
			}
		}},
		{"another size than the stored one is an error", func(t *testing.T, s SecretStore) {
			mustSecret(t, s, "session", 32)
			if b, err := s.AuthSecret("session", 16); err == nil {
				t.Fatalf("got %d bytes for a 32-byte secret asked as 16", len(b))
			}
		}},
		{"bad names and sizes are refused", func(t *testing.T, s SecretStore) {
			for _, c := range []struct {
				name string
				size int
			}{{badID, 32}, {"", 32}, {"s", 0}, {"s", -1}} {
				if _, err := s.AuthSecret(c.name, c.size); err == nil {
					t.Errorf("AuthSecret(%q, %d) succeeded", c.name, c.size)
				}
			}
		}},
		{"concurrent first calls agree", func(t *testing.T, s SecretStore) {
			const callers = 16
			got := make([][]byte, callers)
			var wg sync.WaitGroup
			for i := range callers {
				wg.Go(func() {
					var err error
					if got[i], err = s.AuthSecret("race", 32); err != nil {
						t.Errorf("AuthSecret: %v", err)
					}
				})
			}
			wg.Wait()
			for i := range got {
				if !bytes.Equal(got[i], got[0]) || len(got[i]) != 32 {
					t.Fatalf("caller %d got %x, caller 0 %x", i, got[i], got[0])
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, newStore(t)) })
	}
}

func mustSecret(t *testing.T, s SecretStore, name string, size int) []byte {
	t.Helper()
	b, err := s.AuthSecret(name, size)
	if err != nil || len(b) != size {
		t.Fatalf("AuthSecret(%s, %d) = %x, %v", name, size, b, err)
	}
	return b
}
