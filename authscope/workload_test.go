package authscope

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/authscope/oidctest"
)

// TestWorkloadTokens: a CI job's OIDC token, as a bearer token or as the
// Basic password, is judged by the policy with its groups claim; wrong
// audience, expired, forged and foreign tokens are refused.
func TestWorkloadTokens(t *testing.T) {
	p := oidctest.New(t, "unused")
	const aud = "registry.example"
	pol, err := NewPolicy(PolicyConfig{
		ExternalGroups: true,
		Repositories: map[string]RepositoryPolicy{
			"blumeops/**": {Policies: []Grant{{Groups: []string{WorkloadPrefix + "blumeops"}, Actions: []string{ActionRead, ActionCreate}}}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewAuthorizer(Options{Policy: pol, Workload: &WorkloadVerifier{
		Issuer: p.Issuer(), Audience: aud, Claims: ClaimMapping{Groups: "repository_owner"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	job := map[string]any{"sub": "repo:blumeops/app:ref:refs/heads/main", "repository_owner": "blumeops"}
	good := p.Token(aud, job)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	forgedClaims := map[string]any{"iss": p.Issuer(), "aud": aud, "exp": time.Now().Add(time.Hour).Unix(), "sub": "x", "repository_owner": "blumeops"}
	expired := map[string]any{"exp": time.Now().Add(-time.Hour).Unix(), "iat": time.Now().Add(-2 * time.Hour).Unix()}
	for k, v := range job {
		expired[k] = v
	}
	push := Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull, ScopePush)}}
	for _, tc := range []struct {
		name   string
		auth   func(*http.Request)
		status int
	}{
		{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+good) }, 0},
		{"basic password", func(r *http.Request) { r.SetBasicAuth("ci", good) }, 0},
		{"wrong audience", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+p.Token("other", job)) }, http.StatusUnauthorized},
		{"expired", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+p.Token(aud, expired)) }, http.StatusUnauthorized},
		{"forged", func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+oidctest.SignWith(other, forgedClaims)) }, http.StatusUnauthorized},
		{"other owner", func(r *http.Request) {
			r.Header.Set("Authorization", "Bearer "+p.Token(aud, map[string]any{"sub": "repo:evil/app", "repository_owner": "evil"}))
		}, http.StatusForbidden},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
			tc.auth(r)
			r, err := a.Authorize(r, push)
			var d *Denial
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.status != 0 && (!errors.As(err, &d) || d.Status != tc.status):
				t.Fatalf("want %d, got %v", tc.status, err)
			}
			if tc.status == 0 {
				if id, _ := IdentityOf(r); id.Method != MethodWorkload || id.User != WorkloadPrefix+job["sub"].(string) {
					t.Fatalf("identity %+v", id)
				}
			}
		})
	}
}

// TestWorkloadUnknownKeysDoNotHammerProvider: the claims checked before
// the signature are public, so anyone can make tokens that name the
// issuer and audience and an unknown kid. Each must not make the server
// fetch the provider's keys again; a rotated key is still picked up once
// the refresh interval has passed.
func TestWorkloadUnknownKeysDoNotHammerProvider(t *testing.T) {
	p := oidctest.New(t, "unused")
	const aud = "registry.example"
	clk := newClock()
	v := &WorkloadVerifier{Issuer: p.Issuer(), Audience: aud, Now: clk.Now}
	ctx := t.Context()
	if _, err := v.Verify(ctx, p.Token(aud, map[string]any{"sub": "job"})); err != nil {
		t.Fatal(err)
	}
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	claims := func() map[string]any {
		return map[string]any{"iss": p.Issuer(), "aud": aud, "sub": "x", "exp": clk.Now().Add(time.Hour).Unix()}
	}
	for i := range 20 {
		forged := oidctest.SignWithKid(other, "made-up-"+string(rune('a'+i)), claims())
		if _, err := v.Verify(ctx, forged); err == nil {
			t.Fatal("forged token accepted")
		}
	}
	if _, jwks := p.Fetches(); jwks > 1 {
		t.Fatalf("20 forged tokens made %d key fetches, want 1 in all", jwks)
	}
	// The provider rotates to a new key; past the refresh interval a
	// token signed by it verifies after one more fetch.
	p.AddKey("rotated", other)
	clk.Add(jwksRefreshEvery + time.Second)
	if _, err := v.Verify(ctx, oidctest.SignWithKid(other, "rotated", claims())); err != nil {
		t.Fatalf("token of the rotated key: %v", err)
	}
	if _, jwks := p.Fetches(); jwks != 2 {
		t.Fatalf("%d key fetches, want 2", jwks)
	}
}

// TestWorkloadNamesApart: whoever runs jobs at the CI system picks the
// values of its claims (a repository owner is any account's name, a
// GitHub-style issuer serves the whole forge), so a workload's user name
// and groups must never equal a person's or an identity provider's
// group: they carry WorkloadPrefix, and a sign-in may not use it.
func TestWorkloadNamesApart(t *testing.T) {
	p := oidctest.New(t, "unused")
	const aud = "registry.example"
	pol, err := NewPolicy(PolicyConfig{
		ExternalGroups: true,
		Groups:         map[string][]string{"admins": {"root"}},
		Admin:          &AdminPolicy{Users: []string{"root"}, Groups: []string{"admins"}},
		Repositories: map[string]RepositoryPolicy{
			"**": {Anonymous: []string{ActionRead}},
			"blumeops/**": {Policies: []Grant{
				{Groups: []string{WorkloadPrefix + "blumeops"}, Actions: []string{ActionRead, ActionCreate}},
				{Users: []string{WorkloadPrefix + "release@example.org"}, Actions: AllActions},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	byEmail, err := NewAuthorizer(Options{Policy: pol, Workload: &WorkloadVerifier{
		Issuer: p.Issuer(), Audience: aud, Claims: ClaimMapping{Username: "email"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	byOwner, err := NewAuthorizer(Options{Policy: pol, Workload: &WorkloadVerifier{
		Issuer: p.Issuer(), Audience: aud, Claims: ClaimMapping{Groups: "repository_owner"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	byActor, err := NewAuthorizer(Options{Policy: pol, Workload: &WorkloadVerifier{
		Issuer: p.Issuer(), Audience: aud, Claims: ClaimMapping{Username: "actor", Groups: "repository_owner"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	del := Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopeDelete)}}
	push := Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull, ScopePush)}}
	for _, tc := range []struct {
		name   string
		a      *Authorizer
		claims map[string]any
		need   Need
		status int
	}{
		{"owner named like the admin group", byOwner, map[string]any{"sub": "repo:admins/x", "repository_owner": "admins"}, del, http.StatusForbidden},
		{"actor named like the admin user", byActor, map[string]any{"sub": "repo:evil/x", "actor": "root", "repository_owner": "evil"}, del, http.StatusForbidden},
		// An address the issuer did not verify names no workload.
		{"unverified address", byEmail, map[string]any{"sub": "job-1", "email": "release@example.org", "email_verified": false}, del, http.StatusUnauthorized},
		{"verified address", byEmail, map[string]any{"sub": "job-1", "email": "release@example.org", "email_verified": true}, del, 0},
		{"its own owner's group", byOwner, map[string]any{"sub": "repo:blumeops/app", "repository_owner": "blumeops"}, push, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodDelete, "/v2/blumeops/app/manifests/v1", nil)
			r.Header.Set("Authorization", "Bearer "+p.Token(aud, tc.claims))
			r, err := tc.a.Authorize(r, tc.need)
			var d *Denial
			switch {
			case tc.status == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.status != 0 && (!errors.As(err, &d) || d.Status != tc.status):
				t.Fatalf("want %d, got %v", tc.status, err)
			}
			if tc.status == http.StatusUnauthorized {
				return // no identity: the token was refused
			}
			if id, _ := IdentityOf(r); !strings.HasPrefix(id.User, WorkloadPrefix) {
				t.Fatalf("identity %+v", id)
			}
		})
	}
}

// TestDiscoveryOutlivesItsCaller: a caller that gives up (a client that
// hangs up) during the first discovery does not leave a failure that
// refuses everyone else until the retry interval has passed.
func TestDiscoveryOutlivesItsCaller(t *testing.T) {
	p := oidctest.New(t, "unused")
	const aud = "registry.example"
	v := &WorkloadVerifier{Issuer: p.Issuer(), Audience: aud}
	tok := p.Token(aud, map[string]any{"sub": "job"})
	gone, cancel := context.WithCancel(t.Context())
	cancel()
	_, _ = v.Verify(gone, tok)
	if _, err := v.Verify(t.Context(), tok); err != nil {
		t.Fatalf("the next caller: %v", err)
	}
	if d, _ := p.Fetches(); d != 1 {
		t.Fatalf("%d discoveries, want 1", d)
	}
}

// A workload token that cannot be checked because its issuer's keys fail
// or the issuer is unreachable is ErrUnavailable (503), not a refused
// token (ErrWorkloadToken, 401); the keys are fetched again soon after a
// failure; and with the keys up a forged token is refused as before.
func TestWorkloadIssuerOutage(t *testing.T) {
	p := oidctest.New(t, "unused")
	const aud = "registry.example"
	now := time.Now()
	clock := func() time.Time { return now }
	v := &WorkloadVerifier{Issuer: p.Issuer(), Audience: aud}
	v.Now = clock
	job := map[string]any{"sub": "repo:blumeops/app", "repository_owner": "blumeops"}
	good := p.Token(aud, job)
	p.SetKeysDown(true)
	_, err := v.Verify(context.Background(), good)
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrWorkloadToken) {
		t.Fatalf("keys failing: %v, want ErrUnavailable", err)
	}
	p.SetKeysDown(false)
	if _, err := v.Verify(context.Background(), good); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("right after the failed fetch: %v, want ErrUnavailable until the retry", err)
	}
	now = now.Add(jwksRetryFailedAfter)
	if _, err := v.Verify(context.Background(), good); err != nil {
		t.Fatalf("keys back: %v", err)
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	forged := oidctest.SignWith(other, map[string]any{"iss": p.Issuer(), "aud": aud, "exp": now.Add(time.Hour).Unix(), "sub": "x"})
	if _, err := v.Verify(context.Background(), forged); !errors.Is(err, ErrWorkloadToken) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("forged token with the keys up: %v, want ErrWorkloadToken", err)
	}

	gone := oidctest.New(t, "unused")
	token := gone.Token(aud, job)
	gone.Close()
	v = &WorkloadVerifier{Issuer: gone.Issuer(), Audience: aud}
	if _, err := v.Verify(context.Background(), token); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("issuer unreachable: %v, want ErrUnavailable", err)
	}
}
