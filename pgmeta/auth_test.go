package pgmeta

import (
	"bytes"
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/authstoretest"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// openStore opens a store on a fresh database of the shared server.
func openStore(t testing.TB) *Store {
	t.Helper()
	return openDSN(t, pgtest.NewDatabase(t))
}

func openDSN(t testing.TB, dsn string) *Store {
	t.Helper()
	s, err := Open(context.Background(), Options{DSN: dsn})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

func TestAPIKeyContract(t *testing.T) {
	authstoretest.APIKeys(t, func(t *testing.T) authscope.APIKeyStore { return openStore(t) })
}

func TestSessionContract(t *testing.T) {
	authstoretest.Sessions(t, func(t *testing.T) authscope.SessionStore { return openStore(t) })
}

func TestSecretContract(t *testing.T) {
	authstoretest.Secrets(t, func(t *testing.T) authstoretest.SecretStore { return openStore(t) })
}

// replicas opens n stores, as n replicas would, on one fresh database.
func replicas(t *testing.T, n int) []*Store {
	dsn := pgtest.NewDatabase(t)
	out := make([]*Store, n)
	for i := range out {
		out[i] = openDSN(t, dsn)
	}
	return out
}

// TestAuthSecretAcrossReplicas: replicas that make the session key at once
// all get the same one, so a cookie sealed on one opens on the others.
func TestAuthSecretAcrossReplicas(t *testing.T) {
	rs := replicas(t, 3)
	got := make([][]byte, 12)
	var wg sync.WaitGroup
	for i := range got {
		wg.Go(func() {
			var err error
			if got[i], err = rs[i%len(rs)].AuthSecret("session", 32); err != nil {
				t.Errorf("replica %d: %v", i%len(rs), err)
			}
		})
	}
	wg.Wait()
	for i := range got {
		if len(got[i]) != 32 || !bytes.Equal(got[i], got[0]) {
			t.Fatalf("call %d got %x, call 0 %x", i, got[i], got[0])
		}
	}
}

// TestUpdateAPIKeyAcrossReplicas: read-modify-write of one key on several
// replicas at once loses no update.
func TestUpdateAPIKeyAcrossReplicas(t *testing.T) {
	rs := replicas(t, 3)
	if err := rs[0].CreateAPIKey("n", []byte("0")); err != nil {
		t.Fatal(err)
	}
	const each = 20
	var wg sync.WaitGroup
	for _, r := range rs {
		wg.Go(func() {
			for range each {
				err := r.UpdateAPIKey("n", func(b []byte) ([]byte, error) {
					n, err := strconv.Atoi(string(b))
					return []byte(strconv.Itoa(n + 1)), err
				})
				if err != nil {
					t.Errorf("update: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if rec, _ := rs[2].APIKey("n"); string(rec) != strconv.Itoa(len(rs)*each) {
		t.Fatalf("counter = %s after %d increments", rec, len(rs)*each)
	}
}

// TestSessionsSweptOnSignIn: expired sessions do not pile up; a sign-in
// removes them.
func TestSessionsSweptOnSignIn(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, `INSERT INTO sessions (id, record, expires)
		SELECT 'old' || g, '\x00', now() - interval '1 hour' FROM generate_series(1, 150) g`); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateSession("new", []byte("v"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM sessions WHERE expires <= now()").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 150-sweepSessions {
		t.Fatalf("%d expired sessions left, want %d", left, 150-sweepSessions)
	}
	if _, err := s.Session("new"); err != nil {
		t.Fatalf("the new session: %v", err)
	}
	if _, err := s.Session("old1"); !errors.Is(err, authscope.ErrSessionNotFound) {
		t.Fatalf("an expired session: %v", err)
	}
}

// TestImportAuthSecret: an imported secret is the one AuthSecret then
// returns; a second import of other bytes changes nothing and says so by
// returning the stored one.
func TestImportAuthSecret(t *testing.T) {
	s := openStore(t)
	key := bytes.Repeat([]byte{7}, 32)
	if got, created, err := s.ImportAuthSecret("session", key); err != nil || !created || !bytes.Equal(got, key) {
		t.Fatalf("import: %x, %v, %v", got, created, err)
	}
	if got, err := s.AuthSecret("session", 32); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("AuthSecret after import: %x, %v", got, err)
	}
	other := bytes.Repeat([]byte{8}, 32)
	if got, created, err := s.ImportAuthSecret("session", other); err != nil || created || !bytes.Equal(got, key) {
		t.Fatalf("second import: %x, %v, %v (want the first key kept)", got, created, err)
	}
	if _, _, err := s.ImportAuthSecret("session", nil); err == nil {
		t.Fatal("an empty secret was accepted")
	}
}
