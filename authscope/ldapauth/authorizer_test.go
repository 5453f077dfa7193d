package ldapauth

import (
	"errors"
	"net/http"
	"net/http/httptest"
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
