package caddymodule

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestSignInAcrossSteppedReplica: two replicas share a folder and
// PostgreSQL behind one address; a browser's sign-in starts on one and
// its callback lands on the other, whose wall clock was stepped ten
// minutes ahead (as cache/composite's TestSteppedReplicaJudgesOthersTimes
// steps one). The sign-in state, a session's and an API key's expiry
// are times one replica writes and another judges, so they are judged on
// the database's clock, as the store's shared times are. Before, the
// stepped replica judged the state on its own clock, found the sign-in
// ten minutes old, and refused it: 400 "the sign-in took too long".
func TestSignInAcrossSteppedReplica(t *testing.T) {
	dsn := pgtest.NewDatabase(t)
	folder := t.TempDir()
	provider := oidctest.New(t, "alice", "devs")
	var a, b http.Handler
	lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The callback, and everything after it, reach the stepped
		// replica.
		if strings.HasSuffix(r.URL.Path, "/login") {
			a.ServeHTTP(w, r)
			return
		}
		b.ServeHTTP(w, r)
	}))
	t.Cleanup(lb.Close)
	replica := func(step time.Duration) http.Handler {
		c := &sharedCluster{folder: folder, dsn: dsn, ttl: time.Hour, grace: time.Hour, logger: zap.NewNop(),
			localClock: func() time.Time { return time.Now().Add(step) }}
		t.Cleanup(func() { _ = c.Destruct() })
		auth := &Auth{OIDC: &OIDC{Issuer: provider.Issuer(), ClientID: oidctest.ClientID, ClientSecret: oidctest.ClientSecret,
			ExternalURL: lb.URL, SessionKey: strings.Repeat("ab", 32)}, clock: c.now}
		parts, err := auth.provisionSignIn(c.records, nil, zap.NewNop())
		if err != nil {
			t.Fatal(err)
		}
		// The records keep the login ledger the replicas share: a
		// wrapper that gave them the clock hid it, and login_limit
		// counted each replica's guesses apart (e2e
		// TestReplicaLoginLimit).
		if rec, err := c.records(); err != nil {
			t.Fatal(err)
		} else if _, ok := rec.(authscope.GuessLedger); !ok {
			t.Fatalf("the cluster's auth records (%T) keep no login ledger", rec)
		}
		// A replica running for a while has read the database's clock
		// (before its first reading, a store has only its own).
		st, _, err := c.open()
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for time.Until(st.Now()).Abs() > 2*time.Second && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		return parts.signIn
	}
	a, b = replica(0), replica(10*time.Minute)

	jar, _ := cookiejar.New(nil)
	browser := &http.Client{Jar: jar}
	resp, err := browser.Get(lb.URL + authscope.AuthPath + "login")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "alice") {
		t.Fatalf("a sign-in whose callback reached a replica 10 min ahead: %d %.300s", resp.StatusCode, body)
	}
}
