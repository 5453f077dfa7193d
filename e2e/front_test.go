package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

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
	skopeo := tool(t, "skopeo")
	issuer := authtest.New(map[string]string{"ci": "ci-pw", "admin": "admin-pw"}, func(user, typ, name string, asked []string) []string {
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
	// A host name, not 127.0.0.1: go-containerregistry (the seeding
	// below) refuses realms at loopback addresses.
	realm := strings.Replace(issuer.Start(t).URL, "127.0.0.1", "localhost", 1) + "/auth"

	dir := t.TempDir()
	certs := filepath.Join(dir, "token.pem")
	if err := os.WriteFile(certs, issuer.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(dir, "backend")
	backend := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		auth {
			token {
				realm %s
				service %s
				issuer %q
				trusted_certs %s
			}
		}
	}`, strconv.Quote(dataDir), realm, authtest.Service, authtest.IssuerName, strconv.Quote(certs)),
		http.StatusUnauthorized)

	// The backend holds what its own mirroring would have fetched.
	admin := remote.WithAuth(&authn.Basic{Username: "admin", Password: "admin-pw"})
	want := map[string]string{}
	for _, tag := range []string{"podman", "skopeo", "bare", "ns", "docker"} {
		img := platformImage(t)
		ref, err := name.ParseReference(backend.addr+"/docker.io/library/debian:"+tag, name.Insecure)
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
			proxy
		}
	}
	reverse_proxy %s`, realm, backend.addr), http.StatusUnauthorized)
	m := front.localhostAddr()
	home := t.TempDir()
	authFile := filepath.Join(home, "auth.json")
	if err := os.WriteFile(authFile, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"REGISTRY_AUTH_FILE=" + authFile, "DOCKER_CONFIG=" + home, "HOME=" + home}
	seeded := len(issuer.ScopesAsked())

	t.Run("podman through a registries.conf mirror", func(t *testing.T) {
		podman := tool(t, "podman")
		conf := filepath.Join(t.TempDir(), "registries.conf")
		regConf := fmt.Sprintf("[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\n\n[[registry.mirror]]\nlocation = \"%s/docker.io\"\ninsecure = true\n", m)
		if err := os.WriteFile(conf, []byte(regConf), 0o644); err != nil {
			t.Fatal(err)
		}
		penv := append(slices.Clone(env), "CONTAINERS_REGISTRIES_CONF="+conf)
		base := podmanBase(t)
		const ref = "docker.io/library/debian:podman"
		run(t, penv, podman, append(base, "pull", ref)...)
		got := strings.TrimSpace(run(t, penv, podman, append(base, "image", "inspect", "--format", "{{.Digest}}", ref)...))
		if got != want["podman"] {
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
		ref, _ := name.ParseReference(backend.addr+"/docker.io/ci/tool:v1", name.Insecure)
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
