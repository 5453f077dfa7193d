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

// TestKnownAddressNotStarved: wrong passwords for made-up names from many
// addresses (each within its own login bound) take every turn for the
// directory's binds, so a good login of a user from the address that
// logged in to it before, not remembered (cache_ttl 0, or past it), waited
// behind them the whole authscope.TurnWait and was then refused 429:
// htpasswd's comparisons have turns of their own for such logins
// (Htpasswd.CheckFrom), the directory's binds had none. Nor may an API
// key's owner lookup, which needs a verified key first, wait behind them.
func TestKnownAddressNotStarved(t *testing.T) {
	if testing.Short() {
		t.Skip("floods the directory for about 10 s")
	}
	s := directory(t)
	c := baseConfig(s)
	c.MaxConnections = 1
	d := newDirectory(t, c)
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{"pub/**": {Anonymous: []string{"read"}, Default: []string{"read"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	guesses := authscope.NewGuesses(authscope.GuessLimits{PerClient: -1, PerAccount: -1})
	a, err := authscope.NewAuthorizer(authscope.Options{Directory: d, Policy: pol, Guesses: guesses,
		ClientIP: func(r *http.Request) string { return r.Header.Get("X-Test-Client") }})
	if err != nil {
		t.Fatal(err)
	}
	pull := authscope.Need{Scopes: []authscope.Scope{authscope.RepositoryScope("pub/app", "pull")}}
	login := func(from, user, pass string) (time.Duration, error) {
		r := httptest.NewRequest(http.MethodGet, "/v2/pub/app/tags/list", nil)
		r.Header.Set("X-Test-Client", from)
		r.SetBasicAuth(user, pass)
		start := time.Now()
		_, err := a.Authorize(r, pull)
		return time.Since(start), err
	}
	if _, err := login("10.0.0.1", "alice", "alice-pw"); err != nil {
		t.Fatalf("alice's first login: %v", err)
	}
	one := time.Hour
	for range 3 {
		took, _ := login("10.9.9.9", "bob", "wrong")
		one = min(one, took)
	}
	// Enough logins queued for their turn to outlast the wait for one.
	floods := int(authscope.TurnWait/one) + 2
	t.Logf("one login %s: %d logins in the flood", one, floods)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range floods {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				login(fmt.Sprintf("10.%d.%d.%d", 1+n%250, i/250%250, i%250), fmt.Sprintf("nobody%d-%d", i, n), "wrong")
			}
		})
	}
	defer wg.Wait()
	defer close(stop)
	time.Sleep(time.Second) // the flood queued for its turns
	took, lerr := login("10.0.0.1", "alice", "alice-pw")
	start := time.Now()
	_, kerr := d.Lookup(context.Background(), "carol")
	keyTook := time.Since(start)
	if lerr != nil || took > authscope.TurnWait/2 {
		t.Errorf("alice's login from her known address during the flood: %v after %s, want accepted within %s", lerr, took.Round(time.Millisecond), authscope.TurnWait/2)
	}
	if kerr != nil || keyTook > authscope.TurnWait/2 {
		t.Errorf("carol's lookup (an API key's owner) during the flood: %v after %s, want found within %s", kerr, keyTook.Round(time.Millisecond), authscope.TurnWait/2)
	}
	t.Logf("during the flood: alice's login %v in %s, carol's lookup %v in %s", lerr, took.Round(time.Millisecond), kerr, keyTook.Round(time.Millisecond))
}
