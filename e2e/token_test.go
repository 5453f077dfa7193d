package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope/authtest"
)

// tokenBlock is the Caddyfile `token` block that trusts issuer, whose
// URL is realm, with extra lines (e.g. "proxy") inside it. It writes the
// issuer's public key to a file for trusted_certs.
func tokenBlock(t *testing.T, issuer *authtest.Issuer, realm string, extra ...string) string {
	t.Helper()
	certs := filepath.Join(t.TempDir(), "token.pem")
	if err := os.WriteFile(certs, issuer.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	lines := []string{"realm " + realm, "service " + authtest.Service,
		"issuer " + strconv.Quote(authtest.IssuerName), "trusted_certs " + strconv.Quote(certs)}
	return "\t\t\ttoken {\n\t\t\t\t" + strings.Join(append(lines, extra...), "\n\t\t\t\t") + "\n\t\t\t}"
}

// TestTokenAuth runs the binary with Docker token auth and the token proxy
// in front of a token service that signs as docker_auth does and whose
// ACLs name internal names only: anyone may pull docker.io/** and ci/**,
// user ci may push ci/**. Every client form of a mirrored name (prefix,
// containerd's ns=, Docker's registry-mirrors with no prefix at all) must
// reach the token service as docker.io/..., or the pull fails.
func TestTokenAuth(t *testing.T) {
	skopeo := tool(t, "skopeo")
	issuer := authtest.New(map[string]string{"ci": "ci-pw"}, func(user, typ, name string, asked []string) []string {
		switch {
		case typ != "repository":
			return nil
		case strings.HasPrefix(name, "docker.io/"):
			return authtest.GrantIf(asked, "pull")
		case strings.HasPrefix(name, "ci/") && user == "ci":
			return authtest.GrantIf(asked, "pull", "push")
		case strings.HasPrefix(name, "ci/"):
			return authtest.GrantIf(asked, "pull")
		}
		return nil
	})
	issuerSrv := issuer.Start(t)
	hub := newUpstream(t)
	wantHub := map[string]string{}
	for _, tag := range []string{"prefix", "podman", "ns", "docker"} {
		wantHub[tag] = hub.push(t, "library/app:"+tag, platformImage(t))
	}

	dataDir := t.TempDir()
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			default
		}
		local ci
		auth {
%s
		}
	}`, strconv.Quote(dataDir), hub.URL, tokenBlock(t, issuer, issuerSrv.URL, "proxy")),
		http.StatusUnauthorized)
	m := s.localhostAddr()
	home := t.TempDir()
	// No stored credentials: anonymous means anonymous. podman wants the
	// auth file to exist.
	authFile := filepath.Join(home, "auth.json")
	if err := os.WriteFile(authFile, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REGISTRY_AUTH_FILE=" + authFile, "DOCKER_CONFIG=" + home, "HOME=" + home}

	img := ociImage(t)
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	ciDigest := d.String()
	src := writeLayout(t, img)
	push := func(ref string, creds ...string) []string {
		args := []string{"copy", "--retry-times", "0", "--preserve-digests", "--dest-tls-verify=false"}
		if len(creds) > 0 {
			args = append(args, "--dest-creds", creds[0])
		}
		return append(args, "oci:"+src, "docker://"+m+"/"+ref)
	}

	t.Run("ci pushes with a token", func(t *testing.T) {
		run(t, env, skopeo, push("ci/app:v1", "ci:ci-pw")...)
	})
	t.Run("refused pushes", func(t *testing.T) {
		runFail(t, env, skopeo, push("ci/app:v2")...)
		runFail(t, env, skopeo, push("ci/app:v3", "ci:wrong")...)
		runFail(t, env, skopeo, push("other/app:v1", "ci:ci-pw")...)
		runFail(t, env, skopeo, push("docker.io/library/app:mine", "ci:ci-pw")...)
	})
	t.Run("anonymous pull with podman", func(t *testing.T) {
		if got := podmanPull(t, env, m+"/ci/app:v1", "--tls-verify=false"); got != ciDigest {
			t.Errorf("podman pulled %s, want %s", got, ciDigest)
		}
	})
	t.Run("mirror by prefix with podman", func(t *testing.T) {
		if got := podmanMirrorPull(t, env, m, "docker.io/library/app:podman"); got != wantHub["podman"] {
			t.Errorf("podman pulled %s, want %s", got, wantHub["podman"])
		}
	})
	t.Run("mirror by prefix with skopeo", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "layout")
		run(t, env, skopeo, "copy", "--retry-times", "0", "--src-tls-verify=false",
			"docker://"+m+"/docker.io/library/app:prefix", "oci:"+out+":v1")
		if got := layoutDigest(t, out); got != wantHub["prefix"] {
			t.Errorf("pulled %s, want %s", got, wantHub["prefix"])
		}
	})

	t.Run("containerd with ns and a push with credentials", func(t *testing.T) {
		c := startContainerd(t)
		hosts := t.TempDir()
		writeHostsToml(t, hosts, "_default", fmt.Sprintf("[host.\"http://%s\"]\n  capabilities = [\"pull\", \"resolve\", \"push\"]\n", m))
		if got := c.pull(t, "tok", hosts, "docker.io/library/app:ns", "--snapshotter", "native"); got != wantHub["ns"] {
			t.Errorf("pulled %s, want %s", got, wantHub["ns"])
		}
		// containerd POSTs the OAuth2 password form to the token proxy.
		run(t, nil, c.ctr, "--address", c.sock, "-n", "tok", "images", "tag", "docker.io/library/app:ns", m+"/ci/from-containerd:v1")
		run(t, nil, c.ctr, "--address", c.sock, "-n", "tok", "images", "push", "--plain-http", "--user", "ci:ci-pw", m+"/ci/from-containerd:v1")
		raw := run(t, env, skopeo, "inspect", "--raw", "--retry-times", "0", "--tls-verify=false", "docker://"+m+"/ci/from-containerd:v1")
		if !strings.Contains(raw, "layers") {
			t.Errorf("pushed manifest: %s", raw)
		}
		t.Run("docker registry-mirrors", func(t *testing.T) {
			if got := startDockerd(t, c, m).pull(t, "app:docker"); got != wantHub["docker"] {
				t.Errorf("docker pulled %s, want %s", got, wantHub["docker"])
			}
		})
	})

	// The token service saw internal names only: the proxy translated
	// library/app (ns=, registry-mirrors) to docker.io/library/app.
	asked := issuer.ScopesAsked()
	if len(asked) == 0 {
		t.Fatal("the token service was never asked")
	}
	for _, sc := range asked {
		_, rest, _ := strings.Cut(sc, ":")
		if !strings.HasPrefix(rest, "docker.io/") && !strings.HasPrefix(rest, "ci/") && !strings.HasPrefix(rest, "other/") {
			t.Errorf("the token service was asked for %q, not an internal name", sc)
		}
	}
}
