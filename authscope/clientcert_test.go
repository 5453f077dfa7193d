package authscope

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/internal/testpki"
)

// certAnswer is what the test server tells of a request's identity.
type certAnswer struct {
	Status int
	User   string
	Groups []string
	Method string
	// Message of a refusal.
	Message string
}

// certServer is a TLS server whose handler runs the Authorizer with
// mapping m on each request (needing pull on app, which anonymous callers
// have) and answers the identity as JSON. clientAuth is the server's TLS
// client authentication against ca.
func certServer(t *testing.T, ca *testpki.CA, clientAuth tls.ClientAuthType, m ClientCertMapping) *httptest.Server {
	t.Helper()
	hash, _ := bcrypt.GenerateFromPassword([]byte("ci-pw"), bcrypt.MinCost)
	hp, err := ParseHtpasswd([]byte("ci:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := NewPolicy(PolicyConfig{
		Repositories:   map[string]RepositoryPolicy{"**": {Anonymous: []string{ActionRead}}},
		ExternalGroups: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	az, err := NewAuthorizer(Options{Policy: pol, Htpasswd: hp, ClientCerts: &m})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ans certAnswer
		r2, err := az.Authorize(r, Need{Scopes: []Scope{RepositoryScope("app", ScopePull)}})
		var d *Denial
		switch {
		case errors.As(err, &d):
			ans.Status, ans.Message = d.Status, d.Message
		case err != nil:
			ans.Status = http.StatusInternalServerError
		default:
			id, _ := IdentityOf(r2)
			ans = certAnswer{Status: http.StatusOK, User: id.User, Groups: id.Groups, Method: id.Method}
		}
		_ = json.NewEncoder(w).Encode(ans)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Server(t)}, ClientAuth: clientAuth, ClientCAs: ca.Pool()}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// askAs sends GET / to srv presenting cert (none if nil), with an
// Authorization header if auth is set.
func askAs(t *testing.T, srv *httptest.Server, ca *testpki.CA, cert *tls.Certificate, auth string) (certAnswer, error) {
	t.Helper()
	tc := &tls.Config{RootCAs: ca.Pool()}
	if cert != nil {
		// Sent whatever CAs the server names as acceptable (Go's client
		// would otherwise keep a certificate of another CA to itself).
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
	defer c.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodGet, srv.URL, nil)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		return certAnswer{}, err
	}
	defer resp.Body.Close()
	var ans certAnswer
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil {
		t.Fatal(err)
	}
	return ans, nil
}

// TestClientCertIdentity: a verified certificate names the user by its
// CN or the chosen SAN and the groups by its OUs (or Os); hostile names
// are refused with 401, never mapped to someone.
func TestClientCertIdentity(t *testing.T) {
	ca := testpki.NewCA(t, "test CA")
	spiffe, _ := url.Parse("spiffe://example.org/ns/ci/sa/builder")
	cnOID := asn1.ObjectIdentifier{2, 5, 4, 3}
	cases := []struct {
		name    string
		m       ClientCertMapping
		cert    x509.Certificate
		status  int
		user    string
		groups  []string
		comment string
	}{
		{name: "cn", cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev"}}},
			status: 200, user: "alice"},
		{name: "cn with OU groups", m: ClientCertMapping{Groups: []string{CertGroupOU}},
			cert:   x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev", "ops", "dev"}, Organization: []string{"Acme"}}},
			status: 200, user: "alice", groups: []string{"dev", "ops"}},
		{name: "O and OU groups", m: ClientCertMapping{Groups: []string{CertGroupO, CertGroupOU}},
			cert:   x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev"}, Organization: []string{"Acme"}}},
			status: 200, user: "alice", groups: []string{"Acme", "dev"}},
		{name: "cn with a space inside", cert: x509.Certificate{Subject: pkix.Name{CommonName: "Alice Smith"}},
			status: 200, user: "Alice Smith"},
		{name: "email SAN", m: ClientCertMapping{User: CertUserEmail},
			cert:   x509.Certificate{Subject: pkix.Name{CommonName: "ignored"}, EmailAddresses: []string{"alice@example.org"}},
			status: 200, user: "alice@example.org"},
		{name: "dns SAN", m: ClientCertMapping{User: CertUserDNS},
			cert:   x509.Certificate{Subject: pkix.Name{CommonName: "ignored"}, DNSNames: []string{"node1.example.org"}},
			status: 200, user: "node1.example.org"},
		{name: "uri SAN", m: ClientCertMapping{User: CertUserURI},
			cert:   x509.Certificate{URIs: []*url.URL{spiffe}},
			status: 200, user: "spiffe://example.org/ns/ci/sa/builder"},

		{name: "empty cn", cert: x509.Certificate{Subject: pkix.Name{OrganizationalUnit: []string{"dev"}}}, status: 401},
		{name: "two cns", cert: x509.Certificate{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: cnOID, Value: "alice"}, {Type: cnOID, Value: "admin"}}}}, status: 401},
		{name: "control character", cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice\x1b[31m"}}, status: 401},
		{name: "right-to-left override", cert: x509.Certificate{Subject: pkix.Name{CommonName: "ali\u202ece"}}, status: 401},
		{name: "zero-width space", cert: x509.Certificate{Subject: pkix.Name{CommonName: "adm\u200bin"}}, status: 401},
		{name: "leading space", cert: x509.Certificate{Subject: pkix.Name{CommonName: " admin"}}, status: 401},
		{name: "workload namespace", cert: x509.Certificate{Subject: pkix.Name{CommonName: "workload:repo:org/app"}}, status: 401},
		{name: "empty OU", m: ClientCertMapping{Groups: []string{CertGroupOU}},
			cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{""}}}, status: 401},
		{name: "OU with a newline", m: ClientCertMapping{Groups: []string{CertGroupOU}},
			cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev\nadmins"}}}, status: 401},
		{name: "two email SANs", m: ClientCertMapping{User: CertUserEmail},
			cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice"}, EmailAddresses: []string{"alice@example.org", "admin@example.org"}}, status: 401},
		{name: "no email SAN", m: ClientCertMapping{User: CertUserEmail},
			cert: x509.Certificate{Subject: pkix.Name{CommonName: "alice"}}, status: 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := certServer(t, ca, tls.VerifyClientCertIfGiven, c.m)
			cert := ca.Client(t, c.cert)
			got, err := askAs(t, srv, ca, &cert, "")
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != c.status || got.User != c.user || !slices.Equal(got.Groups, c.groups) {
				t.Errorf("got %+v, want status %d user %q groups %q", got, c.status, c.user, c.groups)
			}
			if c.status == 200 && got.Method != MethodClientCert {
				t.Errorf("method %q, want %q", got.Method, MethodClientCert)
			}
			if c.status == 401 && got.Message != "the client certificate names no usable user or group" {
				t.Errorf("refusal says %q", got.Message)
			}
		})
	}
}

// TestClientCertOnlyVerified: only a certificate the TLS layer verified
// names anyone. One received without verification, or none, is anonymous;
// one of another CA under verification fails the handshake; credentials
// sent along take precedence, and empty Basic credentials do not hide the
// certificate.
func TestClientCertOnlyVerified(t *testing.T) {
	ca, other := testpki.NewCA(t, "test CA"), testpki.NewCA(t, "other CA")
	alice := ca.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "alice"}})
	mallory := other.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "alice"}})

	verifying := certServer(t, ca, tls.VerifyClientCertIfGiven, ClientCertMapping{})
	if got, err := askAs(t, verifying, ca, nil, ""); err != nil || got.Method != MethodAnonymous || got.User != "" {
		t.Errorf("no certificate: %+v %v, want anonymous", got, err)
	}
	if got, err := askAs(t, verifying, ca, &mallory, ""); err == nil {
		t.Errorf("certificate of another CA: %+v, want the handshake refused", got)
	}
	if got, err := askAs(t, verifying, ca, &alice, "Basic "+basicB64("ci", "ci-pw")); err != nil || got.User != "ci" || got.Method != MethodBasic {
		t.Errorf("certificate and Basic credentials: %+v %v, want the htpasswd user", got, err)
	}
	if got, err := askAs(t, verifying, ca, &alice, "Basic "+basicB64("", "")); err != nil || got.User != "alice" || got.Method != MethodClientCert {
		t.Errorf("certificate and empty Basic credentials: %+v %v, want the certificate's user", got, err)
	}

	// Received, not verified (Caddy's client_auth modes request and
	// require): the certificate could be anyone's.
	for _, mode := range []tls.ClientAuthType{tls.RequestClientCert, tls.RequireAnyClientCert} {
		srv := certServer(t, ca, mode, ClientCertMapping{})
		for _, cert := range []*tls.Certificate{&alice, &mallory} {
			if got, err := askAs(t, srv, ca, cert, ""); err != nil || got.Method != MethodAnonymous || got.User != "" {
				t.Errorf("mode %v, certificate of %s: %+v %v, want anonymous", mode, cert.Leaf.Issuer.CommonName, got, err)
			}
		}
	}
}

func basicB64(user, pass string) string {
	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth(user, pass)
	return r.Header.Get("Authorization")[len("Basic "):]
}

func TestClientCertMappingCheck(t *testing.T) {
	for _, m := range []ClientCertMapping{{User: "subject"}, {Groups: []string{"cn"}}, {Groups: []string{"OU"}}} {
		if err := m.Check(); err == nil {
			t.Errorf("%+v: no error", m)
		}
		if _, err := NewAuthorizer(Options{Policy: &Policy{}, ClientCerts: &m}); err == nil {
			t.Errorf("NewAuthorizer took %+v", m)
		}
	}
}
