package caddymodule

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/caddy-oci/caddy-oci/internal/testpki"
)

func TestUnmarshalClientCertificates(t *testing.T) {
	for _, tc := range []struct {
		block   string
		want    *ClientCertificates
		wantErr string
	}{
		{block: "client_certificates {\n}", want: &ClientCertificates{}},
		{block: "client_certificates {\nuser email\ngroups ou o\n}", want: &ClientCertificates{User: "email", Groups: []string{"ou", "o"}}},
		{block: "client_certificates {\nuser uri\ngroups ou\ngroups o\n}", want: &ClientCertificates{User: "uri", Groups: []string{"ou", "o"}}},
		{block: "client_certificates x {\n}", wantErr: "wrong argument count"},
		{block: "client_certificates {\nuser\n}", wantErr: "user needs exactly one argument"},
		{block: "client_certificates {\nuser cn email\n}", wantErr: "user needs exactly one argument"},
		{block: "client_certificates {\nuser subject\n}", wantErr: `client_certificates user "subject": want cn, email, dns or uri`},
		{block: "client_certificates {\ngroups\n}", wantErr: "groups needs at least one attribute: ou, o"},
		{block: "client_certificates {\ngroups OU\n}", wantErr: `client_certificates groups "OU": want ou or o`},
		{block: "client_certificates {\nca /etc/ca.pem\n}", wantErr: `unrecognized client_certificates subdirective "ca" (known: user, groups)`},
	} {
		d := caddyfile.NewTestDispenser("auth {\n" + tc.block + "\n}")
		d.Next()
		a, err := unmarshalAuth(d)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want %q", tc.block, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.block, err)
			continue
		}
		if !reflect.DeepEqual(a.ClientCertificates, tc.want) {
			t.Errorf("%q: got %+v, want %+v", tc.block, a.ClientCertificates, tc.want)
		}
	}

	// JSON: the same fields, and validation that names the directive.
	var a Auth
	if err := caddy.StrictUnmarshalJSON([]byte(`{"client_certificates":{"user":"dns","groups":["o"]},"repositories":{"**":{"anonymous":["read"]}}}`), &a); err != nil {
		t.Fatal(err)
	}
	if want := (&ClientCertificates{User: "dns", Groups: []string{"o"}}); !reflect.DeepEqual(a.ClientCertificates, want) {
		t.Errorf("json: got %+v", a.ClientCertificates)
	}
	if err := a.validate(); err != nil {
		t.Errorf("validate: %v", err)
	}
	b, _ := json.Marshal(ClientCertificates{User: "cn", Groups: []string{"ou"}})
	if string(b) != `{"user":"cn","groups":["ou"]}` {
		t.Errorf("json of the config: %s", b)
	}
	for _, tc := range []struct{ in, wantErr string }{
		{`{"client_certificates":{"user":"serial"},"repositories":{"**":{"anonymous":["read"]}}}`, `client_certificates user "serial"`},
		{`{"client_certificates":{"groups":["cn"]},"repositories":{"**":{"anonymous":["read"]}}}`, `client_certificates groups "cn"`},
		{`{"client_certificates":{},"htpasswd":"/etc/htpasswd"}`, "client_certificates needs access rules or admin"},
	} {
		var a Auth
		if err := caddy.StrictUnmarshalJSON([]byte(tc.in), &a); err != nil {
			t.Fatal(err)
		}
		if err := a.validate(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
			t.Errorf("%s: validate %v, want %q", tc.in, err, tc.wantErr)
		}
	}
}

// certClient is a registry client over TLS that trusts ca and presents
// cert (none if nil), whatever CAs the server asks for.
func certClient(ca *testpki.CA, cert *tls.Certificate) remote.Option {
	tc := &tls.Config{RootCAs: ca.Pool()}
	if cert != nil {
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	return remote.WithTransport(&http.Transport{TLSClientConfig: tc})
}

// TestClientCertificatesInCaddy: Caddy verifies client certificates
// (client_auth verify_if_given with a trust_pool file, as an operator
// writes it); a verified certificate's CN is the user and its OUs are
// groups in the access rules; a certificate of another CA never gets
// past TLS; a client without one gets the anonymous rules.
func TestClientCertificatesInCaddy(t *testing.T) {
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "registry clients CA"), testpki.NewCA(t, "someone else's CA")
	caFile := ca.WritePEM(t, dir)
	certFile, keyFile := testpki.WriteKeyPair(t, dir, "server", ca.Server(t))
	alice := ca.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev"}}})
	bob := ca.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "bob", OrganizationalUnit: []string{"dev"}}})
	carol := ca.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "carol", OrganizationalUnit: []string{"dev", "ops"}}})
	mallory := other.Client(t, x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"ops"}}})
	nameless := ca.Client(t, x509.Certificate{Subject: pkix.Name{OrganizationalUnit: []string{"ops"}}})

	_, port, _ := net.SplitHostPort(freeAddr(t))
	_, httpPort, _ := net.SplitHostPort(freeAddr(t))
	cfg := adaptFront(t, `{
	admin off
	http_port `+httpPort+`
	https_port `+port+`
	auto_https disable_redirects
	storage file_system `+dir+`/caddy
	log {
		level ERROR
	}
}
https://localhost:`+port+` {
	tls `+certFile+` `+keyFile+` {
		client_auth {
			mode verify_if_given
			trust_pool file `+caFile+`
		}
	}
	oci_registry {
		storage `+dir+`/oci
		auth {
			client_certificates {
				groups ou
			}
			access ** {
				anonymous read
			}
			access team/** {
				anonymous read
				user alice read create
			}
			access ops/** {
				group ops read create update delete
			}
		}
	}
}`)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stopCaddy(t) })

	host := "localhost:" + port
	push := func(who *tls.Certificate, repo string) error {
		// A new image each time: a client skips what the registry holds.
		img, _ := random.Image(1024, 1)
		ref, err := name.ParseReference(host + "/" + repo + ":v1")
		if err != nil {
			t.Fatal(err)
		}
		return remote.Write(ref, img, certClient(ca, who), remote.WithAuth(authn.Anonymous))
	}
	get := func(who *tls.Certificate, path string) (int, string) {
		tc := &tls.Config{RootCAs: ca.Pool()}
		if who != nil {
			tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return who, nil }
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: tc}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + host + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	status := func(err error) int {
		var te *transport.Error
		if errors.As(err, &te) {
			return te.StatusCode
		}
		return 0
	}

	if err := push(&alice, "team/app"); err != nil {
		t.Errorf("alice pushes team/app (user rule): %v", err)
	}
	if err := push(&bob, "team/app"); status(err) != http.StatusForbidden {
		t.Errorf("bob pushes team/app: %v, want 403 (identified, not allowed)", err)
	}
	if err := push(&carol, "ops/tool"); err != nil {
		t.Errorf("carol (OU ops) pushes ops/tool (group rule): %v", err)
	}
	if err := push(&alice, "ops/tool"); status(err) != http.StatusForbidden {
		t.Errorf("alice (OU dev) pushes ops/tool: %v, want 403", err)
	}
	if err := push(&nameless, "ops/tool"); status(err) != http.StatusUnauthorized {
		t.Errorf("certificate without a CN: %v, want 401", err)
	}
	if code, body := get(&nameless, "/v2/ops/tool/manifests/v1"); code != http.StatusUnauthorized || !strings.Contains(body, "client certificate names no usable user") {
		t.Errorf("certificate without a CN: %d %s, want 401 saying why", code, body)
	}
	if err := push(&mallory, "ops/tool"); err == nil || !strings.Contains(err.Error(), "tls: unknown certificate authority") {
		t.Errorf("certificate of another CA: %v, want the TLS handshake refused", err)
	}
	if err := push(nil, "team/app"); status(err) != http.StatusUnauthorized {
		t.Errorf("anonymous push: %v, want 401", err)
	}
	ref, _ := name.ParseReference(host + "/team/app:v1")
	if _, err := remote.Image(ref, certClient(ca, nil)); err != nil {
		t.Errorf("anonymous pull (anonymous read): %v", err)
	}
	if code, body := get(nil, "/v2/ops/tool/manifests/v1"); code != http.StatusUnauthorized {
		t.Errorf("anonymous read of ops/tool: %d %s, want 401", code, body)
	}
	if code, body := get(&carol, "/v2/ops/tool/manifests/v1"); code != http.StatusOK {
		t.Errorf("carol reads ops/tool: %d %s", code, body)
	}

	// The same with require_and_verify: no certificate, no connection.
	if err := caddy.Load([]byte(strings.Replace(cfg, `"mode":"verify_if_given"`, `"mode":"require_and_verify"`, 1)), true); err != nil {
		t.Fatal(err)
	}
	if err := push(&alice, "team/other"); err != nil {
		t.Errorf("require_and_verify: alice pushes team/other: %v", err)
	}
	if _, err := remote.Image(ref, certClient(ca, nil)); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("require_and_verify: pull without a certificate: %v, want the handshake refused", err)
	}
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}

	// A header naming a user is nobody's certificate.
	req, _ := http.NewRequest(http.MethodPost, "https://"+host+"/v2/team/app/blobs/uploads/", nil)
	for _, h := range []string{"X-Client-Cert", "X-SSL-Client-S-DN", "X-Forwarded-Client-Cert", "Ssl-Client-Cert"} {
		req.Header.Set(h, "CN=alice,OU=ops")
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool()}}}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("push with client-certificate headers and no certificate: %d, want 401", resp.StatusCode)
	}
}
