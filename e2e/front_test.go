package e2e

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
)

// TestFront runs the binary as oci_front + reverse_proxy in front of an
// existing registry — a second caddy running oci_registry under Docker
// token auth, which stores the Docker Hub images as docker.io/library/...
// the way a zot or distribution mirror does — and a token service whose
// ACLs name only those backend names. Clients pull library/debian the
// ways they reach a Docker Hub mirror, and a CI user pushes; every token
// request must reach the token service in backend names, or it fails.
func TestFront(t *testing.T) {
	tool(t, "skopeo")
	issuer, realm := frontIssuer(t)
	dataDir := t.TempDir()
	backend := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		auth {
%s
		}
	}`, strconv.Quote(dataDir), tokenBlock(t, issuer, realm)),
		http.StatusUnauthorized)

	frontClients(t, issuer, realm, backend.addr)
}

// TestFrontDistribution is TestFront with the distribution registry (v3,
// `registry` on PATH, from `go install
// github.com/distribution/distribution/v3/cmd/registry@v3.0.0`) as the
// backend: its challenges, absolute upload Locations and error details
// are the ones nginx setups rewrite by hand. Like every client it is
// mandatory under CADDY_OCI_E2E=1 (.ci/run installs it).
func TestFrontDistribution(t *testing.T) {
	needBinary(t)
	tool(t, "skopeo")
	bin := tool(t, "registry")
	issuer, realm := frontIssuer(t)
	dir := t.TempDir()
	// distribution trusts certificates, and matches a token's kid against
	// their keys' RFC 7638 thumbprints.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: authtest.IssuerName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &issuer.Key.PublicKey, issuer.Key)
	if err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "token.crt")
	if err := os.WriteFile(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: %s
http:
  addr: %s
auth:
  token:
    realm: %s
    service: %s
    issuer: %q
    rootcertbundle: %s
`, filepath.Join(dir, "data"), addr, realm, authtest.Service, authtest.IssuerName, certs)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := new(syncBuffer)
	cmd := exec.Command(bin, "serve", cfgPath)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("registry output:\n%s", out.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				break
			}
		}
		select {
		case <-done:
			t.Fatalf("registry exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("registry not ready: %v\n%s", err, out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	frontClients(t, issuer, realm, addr)
}

// frontIssuer is a token service that signs as docker_auth does, with
// ACLs that name backend names only: anyone pulls docker.io/**, ci pushes
// docker.io/ci/**, admin (the seeding) does everything. realm is its URL
// with a host name, not 127.0.0.1: go-containerregistry (the seeding)
// refuses realms at loopback addresses.
func frontIssuer(t *testing.T) (issuer *authtest.Issuer, realm string) {
	t.Helper()
	issuer = authtest.New(map[string]string{"ci": "ci-pw", "admin": "admin-pw"}, func(user, typ, name string, asked []string) []string {
		switch {
		case user == "admin":
			return asked
		case typ != "repository":
			return nil
		case strings.HasPrefix(name, "docker.io/ci/") && user == "ci":
			return authtest.GrantIf(asked, "pull", "push")
		case strings.HasPrefix(name, "docker.io/"):
			return authtest.GrantIf(asked, "pull")
		}
		return nil
	})
	realm = strings.Replace(issuer.Start(t).URL, "127.0.0.1", "localhost", 1) + "/auth"
	return issuer, realm
}

// frontClients seeds the backend at backendAddr (token auth against
// issuer, whose service is at realm) with docker.io/library/debian, starts
// the binary as oci_front + reverse_proxy before it, and drives the
// clients through the front.
func frontClients(t *testing.T, issuer *authtest.Issuer, realm, backendAddr string) {
	skopeo := tool(t, "skopeo")
	// The backend holds what its own mirroring would have fetched.
	admin := remote.WithAuth(&authn.Basic{Username: "admin", Password: "admin-pw"})
	want := map[string]string{}
	for _, tag := range []string{"podman", "skopeo", "bare", "ns", "docker"} {
		img := platformImage(t)
		ref, err := name.ParseReference(backendAddr+"/docker.io/library/debian:"+tag, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		if err := remote.Write(ref, img, admin); err != nil {
			t.Fatalf("seeding the backend: %v", err)
		}
		d, _ := img.Digest()
		want[tag] = d.String()
	}

	front := siteServer(t, "", fmt.Sprintf(`	oci_front {
		mirror docker.io {
			default
		}
		token {
			realm %s
			service %s
			proxy
		}
	}
	reverse_proxy %s`, realm, authtest.Service, backendAddr), http.StatusUnauthorized)
	m := front.localhostAddr()
	home := t.TempDir()
	authFile := filepath.Join(home, "auth.json")
	if err := os.WriteFile(authFile, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REGISTRY_AUTH_FILE=" + authFile, "DOCKER_CONFIG=" + home, "HOME=" + home}
	seeded := len(issuer.ScopesAsked())

	t.Run("podman through a registries.conf mirror", func(t *testing.T) {
		if got := podmanMirrorPull(t, env, m, "docker.io/library/debian:podman"); got != want["podman"] {
			t.Errorf("podman pulled %s, want %s", got, want["podman"])
		}
	})
	t.Run("skopeo by the names a client types", func(t *testing.T) {
		for ref, tag := range map[string]string{
			m + "/library/debian:skopeo":           "skopeo",
			m + "/debian:bare":                     "bare",
			m + "/docker.io/library/debian:skopeo": "skopeo",
		} {
			out := filepath.Join(t.TempDir(), "layout")
			run(t, env, skopeo, "copy", "--retry-times", "0", "--src-tls-verify=false", "docker://"+ref, "oci:"+out+":v1")
			if got := layoutDigest(t, out); got != want[tag] {
				t.Errorf("%s: pulled %s, want %s", ref, got, want[tag])
			}
		}
	})
	t.Run("a CI user pushes", func(t *testing.T) {
		img := ociImage(t)
		src := writeLayout(t, img)
		push := func(ref string, creds ...string) []string {
			args := []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false"}
			if len(creds) > 0 {
				args = append(args, "--dest-creds", creds[0])
			}
			return append(args, "oci:"+src, "docker://"+m+"/"+ref)
		}
		run(t, env, skopeo, push("ci/tool:v1", "ci:ci-pw")...)
		runFail(t, env, skopeo, push("ci/tool:v2")...)
		runFail(t, env, skopeo, push("library/debian:mine", "ci:ci-pw")...)
		// The backend has it under its own name.
		ref, _ := name.ParseReference(backendAddr+"/docker.io/ci/tool:v1", name.Insecure)
		desc, err := remote.Get(ref, admin)
		if err != nil {
			t.Fatalf("backend lacks docker.io/ci/tool:v1: %v", err)
		}
		if d, _ := img.Digest(); desc.Digest != d {
			t.Errorf("backend has %s, pushed %s", desc.Digest, d)
		}
		// And the client reads it back by the name it typed.
		out := filepath.Join(t.TempDir(), "layout")
		run(t, env, skopeo, "copy", "--retry-times", "0", "--src-tls-verify=false", "--src-creds", "ci:ci-pw", "docker://"+m+"/ci/tool:v1", "oci:"+out+":v1")
		if got := layoutDigest(t, out); got != desc.Digest.String() {
			t.Errorf("pulled back %s, want %s", got, desc.Digest)
		}
	})
	t.Run("containerd with ns, then Docker registry-mirrors", func(t *testing.T) {
		c := startContainerd(t)
		hosts := t.TempDir()
		writeHostsToml(t, hosts, "_default", fmt.Sprintf("[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\"]\n", m))
		if got := c.pull(t, "front", hosts, "docker.io/library/debian:ns", "--snapshotter", "native"); got != want["ns"] {
			t.Errorf("containerd pulled %s, want %s", got, want["ns"])
		}
		if got := startDockerd(t, c, m).pull(t, "debian:docker"); got != want["docker"] {
			t.Errorf("docker pulled %s, want %s", got, want["docker"])
		}
	})

	asked := issuer.ScopesAsked()[seeded:]
	if len(asked) == 0 {
		t.Fatal("the token service was never asked through the front")
	}
	for _, sc := range asked {
		if _, rest, _ := strings.Cut(sc, ":"); !strings.HasPrefix(rest, "docker.io/") {
			t.Errorf("the token service was asked for %q, not a backend name", sc)
		}
	}
}
