package e2e

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/testpki"
)

// certDir writes a containers-style certificate folder (skopeo's
// --*-cert-dir, /etc/containers/certs.d/<host>/): ca.crt to trust the
// server and, when client is set, client.cert and client.key.
func certDir(t *testing.T, ca *testpki.CA, client *testpki.CA, x509Tmpl *x509.Certificate) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if client != nil {
		cert, key := testpki.WriteKeyPair(t, dir, "client", client.Client(t, *x509Tmpl))
		if err := os.Rename(cert, filepath.Join(dir, "client.cert")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(key, filepath.Join(dir, "client.key")); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestClientCertificatesAndReadOnly runs the binary with two TLS sites on
// one storage: one where Caddy verifies client certificates and their CN
// and OU decide access, one read_only. skopeo, a real client, pushes and
// pulls with certificate folders as users configure them.
func TestClientCertificatesAndReadOnly(t *testing.T) {
	skopeo := tool(t, "skopeo")
	needBinary(t)
	dir := t.TempDir()
	ca, other := testpki.NewCA(t, "registry clients CA"), testpki.NewCA(t, "someone else's CA")
	caFile := ca.WritePEM(t, dir)
	certFile, keyFile := testpki.WriteKeyPair(t, dir, "server", ca.Server(t))
	dataDir := filepath.Join(dir, "data")

	port, mtlsPort, roPort, adminPort := freePort(t), freePort(t), freePort(t), freePort(t)
	cfg := fmt.Sprintf(`{
	admin localhost:%d
	http_port %d
	auto_https disable_redirects
}

http://:%[2]d {
	bind 127.0.0.1
	respond /v2/ 200
}

https://localhost:%[3]d {
	bind 127.0.0.1
	tls %[5]s %[6]s {
		client_auth {
			mode verify_if_given
			trust_pool file %[7]s
		}
	}
	oci_registry {
		storage %[8]s
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
				group ops read create update delete
			}
		}
	}
}

https://localhost:%[4]d {
	bind 127.0.0.1
	tls %[5]s %[6]s
	oci_registry {
		storage %[8]s
		read_only
	}
}
`, adminPort, port, mtlsPort, roPort, strconv.Quote(certFile), strconv.Quote(keyFile), strconv.Quote(caFile), strconv.Quote(dataDir))
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, config: config, addr: "127.0.0.1:" + strconv.Itoa(port), admin: "localhost:" + strconv.Itoa(adminPort), dataDir: dataDir}
	s.start()

	home := t.TempDir()
	env := []string{"REGISTRY_AUTH_FILE=" + filepath.Join(home, "auth.json"), "DOCKER_CONFIG=" + home, "HOME=" + home}
	mtls := "localhost:" + strconv.Itoa(mtlsPort)
	ro := "localhost:" + strconv.Itoa(roPort)
	alice := certDir(t, ca, ca, &x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"dev"}}})
	bob := certDir(t, ca, ca, &x509.Certificate{Subject: pkix.Name{CommonName: "bob", OrganizationalUnit: []string{"dev"}}})
	carol := certDir(t, ca, ca, &x509.Certificate{Subject: pkix.Name{CommonName: "carol", OrganizationalUnit: []string{"ops"}}})
	mallory := certDir(t, ca, other, &x509.Certificate{Subject: pkix.Name{CommonName: "alice", OrganizationalUnit: []string{"ops"}}})
	nobody := certDir(t, ca, nil, nil)

	push := func(certs, src, ref string) []string {
		return []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-cert-dir", certs, "oci:" + src, "docker://" + ref}
	}
	first, firstDigest := newLayout(t)
	second, secondDigest := newLayout(t)

	run(t, env, skopeo, push(alice, first, mtls+"/team/app:v1")...)
	if out := runFail(t, env, skopeo, push(bob, second, mtls+"/team/app:v2")...); !strings.Contains(out, "create on team/app not granted") {
		t.Errorf("bob (CN without a rule) pushing: %s, want denied naming the action", out)
	}
	// Go's TLS client keeps a certificate the server's CAs did not issue
	// to itself (the TLS refusal of one sent anyway is tested in
	// caddymodule): mallory is anonymous, never alice.
	if out := runFail(t, env, skopeo, push(mallory, second, mtls+"/team/app:v2")...); !strings.Contains(out, "unauthorized") {
		t.Errorf("certificate of another CA: %s, want 401", out)
	}
	if out := runFail(t, env, skopeo, push(nobody, second, mtls+"/team/app:v2")...); !strings.Contains(out, "unauthorized") {
		t.Errorf("no certificate pushing: %s, want 401", out)
	}
	// carol's OU ops may move the tag.
	run(t, env, skopeo, push(carol, second, mtls+"/team/app:v1")...)

	pulled := filepath.Join(t.TempDir(), "pulled")
	run(t, env, skopeo, "copy", "--retry-times", "0", "--src-cert-dir", nobody, "docker://"+mtls+"/team/app:v1", "oci:"+pulled+":v1")
	if got := layoutDigest(t, pulled); got != secondDigest {
		t.Errorf("anonymous pull got %s, want %s (carol's)", got, secondDigest)
	}

	// The read-only site serves the same storage and refuses pushes with
	// its message, even to a user who may push on the other site.
	fromRO := filepath.Join(t.TempDir(), "from-ro")
	run(t, env, skopeo, "copy", "--retry-times", "0", "--src-cert-dir", nobody, "docker://"+ro+"/team/app:v1", "oci:"+fromRO+":v1")
	if got := layoutDigest(t, fromRO); got != secondDigest {
		t.Errorf("pull from the read-only site got %s, want %s", got, secondDigest)
	}
	if out := runFail(t, env, skopeo, push(nobody, first, ro+"/team/app:v3")...); !strings.Contains(out, "the registry is read-only") {
		t.Errorf("push to the read-only site: %s, want the read-only message", out)
	}
	if out := runFail(t, env, skopeo, "delete", "--retry-times", "0", "--cert-dir", nobody, "docker://"+ro+"/team/app@"+firstDigest); !strings.Contains(out, "the registry is read-only") {
		t.Errorf("delete on the read-only site: %s, want the read-only message", out)
	}
}
