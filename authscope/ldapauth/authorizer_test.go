package ldapauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// TestAuthorizerWithDirectory: the Authorizer takes the directory's
// identity to the policy; refused credentials are a 401 Denial after
// FailDelay, audited as ldap; a directory that is down is no Denial (the
// registry answers 503) and is not delayed.
func TestAuthorizerWithDirectory(t *testing.T) {
	s := directory(t)
	d := newDirectory(t, baseConfig(s))
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"team/**": {Policies: []authscope.Grant{{Groups: []string{"devs"}, Actions: []string{"read", "create"}}}},
		},
		ExternalGroups: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.InfoLevel)
	const failDelay = 300 * time.Millisecond
	a, err := authscope.NewAuthorizer(authscope.Options{Directory: d, Policy: pol, FailDelay: failDelay, Audit: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	push := authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("team/app", "pull", "push")}}
	try := func(user, pw string) (*http.Request, time.Duration, error) {
		r := httptest.NewRequest(http.MethodPost, "/v2/team/app/blobs/uploads/", nil)
		r.SetBasicAuth(user, pw)
		start := time.Now()
		ar, err := a.Authorize(r, push)
		return ar, time.Since(start), err
	}

	ar, _, err := try("alice", "alice-pw")
	if err != nil {
		t.Fatalf("alice: %v", err)
	}
	if id, _ := authscope.IdentityOf(ar); id.User != "alice" || id.Method != authscope.MethodLDAP {
		t.Errorf("identity %+v", id)
	}
	var den *authscope.Denial
	if _, _, err := try("bob", "bob-pw"); !errors.As(err, &den) || den.Status != http.StatusForbidden {
		t.Errorf("bob, in no group: %v", err)
	}
	_, took, err := try("alice", "wrong")
	if !errors.As(err, &den) || den.Status != http.StatusUnauthorized || den.Challenge == "" {
		t.Errorf("wrong password: %v", err)
	}
	if took < failDelay {
		t.Errorf("wrong password answered after %s, fail delay %s", took, failDelay)
	}
	if e := logs.FilterMessage("denied").FilterField(zap.String("auth", authscope.MethodLDAP)).FilterField(zap.String("credentials", "invalid")); e.Len() != 1 {
		t.Errorf("audit: %d denials of ldap credentials, want 1: %v", e.Len(), logs.All())
	}

	s.Stop()
	_, took, err = try("alice", "alice-pw")
	if errors.As(err, &den) || !errors.Is(err, authscope.ErrUnavailable) {
		t.Errorf("directory down: %v", err)
	}
	if took >= failDelay {
		t.Errorf("directory down: answered after %s, as if the password were wrong", took)
	}
}

// TestBindsBounded: logins sent at once from where no login bound stops
// them (many addresses; here no login_limit) take turns for the
// directory's connections as htpasswd's comparisons take turns for the
// CPUs: a login waits up to the same wait for its turn (authscope.TurnWait),
// and one that waits longer is answered 429 TOOMANYREQUESTS with
// Retry-After, unchecked. Before, a login waited for a connection only
// timeout long and was then answered as a directory outage (503): a
// flood on a working directory turned into outage answers and logs for
// everyone, and a slow directory kept any number of logins waiting.
func TestBindsBounded(t *testing.T) {
	s := directory(t)
	c := baseConfig(s)
	c.MaxConnections, c.Timeout = 1, time.Second
	d := newDirectory(t, c)
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{"pub/**": {Anonymous: []string{"read"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Directory: d, Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	pull := authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("pub/app", "pull")}}
	flood := func(n int) map[string]int {
		var mu sync.Mutex
		answers := map[string]int{}
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				r := httptest.NewRequest(http.MethodGet, "/v2/pub/app/tags/list", nil)
				r.SetBasicAuth(fmt.Sprintf("nobody%d", i), "wrong")
				_, err := a.Authorize(r, pull)
				answer := fmt.Sprint(err)
				var den *authscope.Denial
				switch {
				case errors.As(err, &den) && den.Status == http.StatusTooManyRequests && den.RetryAfter > 0:
					answer = "429"
				case errors.As(err, &den) && den.Status == http.StatusUnauthorized:
					answer = "401"
				case errors.Is(err, authscope.ErrUnavailable):
					answer = "503"
				}
				mu.Lock()
				answers[answer]++
				mu.Unlock()
			})
		}
		wg.Wait()
		return answers
	}

	// A working directory, one connection, and logins enough to keep it
	// busy for three times the timeout: each waits its turn and is
	// answered, none as an outage.
	one := time.Hour
	for range 3 {
		start := time.Now()
		if _, err := d.Login(context.Background(), "bob", "wrong"); !errors.Is(err, authscope.ErrBadCredentials) {
			t.Fatal(err)
		}
		one = min(one, time.Since(start))
	}
	n := int(3*c.Timeout/one) + 2
	if got := flood(n); got["401"] != n {
		t.Errorf("%d logins at once on a working directory (one takes %s): %v; want all 401", n, one, got)
	}

	// A directory that stopped answering: the logins that get a turn
	// wait out the timeout (503: it did not answer), those that wait
	// longer than TurnWait for one are refused, unchecked, with 429.
	s.Pause(t)
	defer s.Resume(t)
	logins := int(authscope.TurnWait/c.Timeout) + 4
	got := flood(logins)
	if got["429"] == 0 || got["429"]+got["503"] != logins {
		t.Errorf("%d logins at once on a paused directory: %v; want 503 for those that got a turn, 429 for the rest", logins, got)
	}
}
