package authscope

// The tests' token service is authtest.Issuer, which signs as docker_auth
// does; these wrappers give it this package's types.

import (
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
)

const (
	testIssuerName = authtest.IssuerName
	testService    = authtest.Service
)

// acl decides the actions a user (empty: anonymous) gets on a name.
type acl = authtest.ACL

type testIssuer struct {
	*authtest.Issuer
	t testing.TB
}

func newTestIssuer(t testing.TB, users map[string]string, a acl) *testIssuer {
	return &testIssuer{Issuer: authtest.New(users, a), t: t}
}

// keySet trusts the issuer's key as a PEM public key bundle would.
func (is *testIssuer) keySet() *KeySet {
	ks := NewKeySet()
	if err := ks.AddPEM(is.PublicKeyPEM()); err != nil {
		is.t.Fatal(err)
	}
	return ks
}

func (is *testIssuer) verifier() *TokenVerifier {
	return &TokenVerifier{Keys: is.keySet(), Issuer: testIssuerName, Service: testService}
}

// sign makes a docker_auth token; see authtest.Issuer.Sign.
func (is *testIssuer) sign(sub string, access []AccessEntry, edit func(*jwt.Token) any) string {
	is.t.Helper()
	s, err := is.Sign(sub, access, edit)
	if err != nil {
		is.t.Fatal(err)
	}
	return s
}

func (is *testIssuer) scopesAsked() []string { return is.ScopesAsked() }

func grantIf(asked []string, allowed ...string) []string { return authtest.GrantIf(asked, allowed...) }
