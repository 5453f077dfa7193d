package e2e

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// upstream is a registry on loopback that records the paths it was asked
// for.
type upstream struct {
	*httptest.Server
	mu    sync.Mutex
	paths []string
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.paths = append(u.paths, r.Method+" "+r.URL.Path)
		u.mu.Unlock()
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(u.Close)
	return u
}

// push stores img at repo:tag on the upstream and returns its digest.
func (u *upstream) push(t *testing.T, repoTag string, img v1.Image) string {
	t.Helper()
	ref, err := name.ParseReference(strings.TrimPrefix(u.URL, "http://")+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// requests are the requests the upstream saw so far, as "METHOD /path".
func (u *upstream) requests() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.paths)
}

// asked reports whether the upstream saw a request for path.
func (u *upstream) asked(path string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.paths {
		if strings.HasSuffix(p, " "+path) {
			return true
		}
	}
	return false
}

// TestMirrorDaemons pulls through the mirror the ways containerd and the
// Docker daemon reach mirrors (CLIENTS.md): hosts.toml with the prefix
// before /v2, with override_path, and _default with ?ns=, for two
// upstream registries at once; and Docker's registry-mirrors, which sends
// bare /v2/library/... to the default mirror. No internet here: every pull
// that succeeds came through the mirror.
func TestMirrorDaemons(t *testing.T) {
	needRoot(t)
	hub, ghcr := newUpstream(t), newUpstream(t)
	want := map[string]string{}
	for _, tag := range []string{"prefix", "override", "default", "docker"} {
		want[tag] = hub.push(t, "library/app:"+tag, platformImage(t))
	}
	want["ghcr"] = ghcr.push(t, "org/tool:v1", platformImage(t))

	dataDir := t.TempDir()
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			default
		}
		mirror ghcr.io {
			upstream %s
		}
	}`, strconv.Quote(dataDir), hub.URL, ghcr.URL), 0)
	m := s.localhostAddr()
	c := startContainerd(t)
	// Without internet the pull can't fall back to the real registry.
	const pullCaps = `  capabilities = ["pull", "resolve"]`
	native := []string{"--snapshotter", "native"}

	t.Run("containerd hosts.toml prefix before /v2", func(t *testing.T) {
		dir := t.TempDir()
		writeHostsToml(t, dir, "docker.io", fmt.Sprintf("server = \"https://registry-1.docker.io\"\n\n[host.\"http://%s/docker.io\"]\n%s\n", m, pullCaps))
		if got := c.pull(t, "prefix", dir, "docker.io/library/app:prefix", native...); got != want["prefix"] {
			t.Errorf("pulled %s, want %s", got, want["prefix"])
		}
	})
	t.Run("containerd hosts.toml override_path", func(t *testing.T) {
		dir := t.TempDir()
		writeHostsToml(t, dir, "docker.io", fmt.Sprintf("[host.\"http://%s/v2/docker.io\"]\n%s\n  override_path = true\n", m, pullCaps))
		if got := c.pull(t, "override", dir, "docker.io/library/app:override", native...); got != want["override"] {
			t.Errorf("pulled %s, want %s", got, want["override"])
		}
	})
	t.Run("containerd _default with ns", func(t *testing.T) {
		dir := t.TempDir()
		writeHostsToml(t, dir, "_default", fmt.Sprintf("[host.\"http://%s\"]\n%s\n", m, pullCaps))
		if got := c.pull(t, "default", dir, "docker.io/library/app:default", native...); got != want["default"] {
			t.Errorf("docker.io: pulled %s, want %s", got, want["default"])
		}
		if got := c.pull(t, "default", dir, "ghcr.io/org/tool:v1", native...); got != want["ghcr"] {
			t.Errorf("ghcr.io: pulled %s, want %s", got, want["ghcr"])
		}
		if !ghcr.asked("/v2/org/tool/manifests/v1") || ghcr.asked("/v2/library/app/manifests/default") {
			t.Errorf("ns=ghcr.io did not reach (only) the ghcr.io upstream: %v", ghcr.paths)
		}
	})
	t.Run("docker registry-mirrors", func(t *testing.T) {
		if got := startDockerd(t, c, m).pull(t, "app:docker"); got != want["docker"] {
			t.Errorf("docker pulled %s, want %s", got, want["docker"])
		}
	})
}
