package e2e

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// mirrorServer starts caddy with one mirror, docker.io, whose upstream is
// upstreamURL, and waits until it serves /v2/.
func mirrorServer(t *testing.T, upstreamURL string) *server {
	t.Helper()
	dataDir := t.TempDir()
	return siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			tag_ttl 1s
			stale_if_error 1h
		}
	}`, strconv.Quote(dataDir), upstreamURL), 0)
}

// TestMirror pulls an image through the pull-through mirror with crane,
// skopeo and podman from an upstream registry running in the test, then
// takes the upstream down and pulls the cached tag again.
func TestMirror(t *testing.T) {
	crane := tool(t, "crane")

	var upstreamRequests atomic.Int64
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamRequests.Add(1)
		reg.ServeHTTP(w, r)
	}))
	upstreamClosed := false
	defer func() {
		if !upstreamClosed {
			upstream.Close()
		}
	}()

	img := ociImage(t)
	want, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	upRef, err := name.ParseReference(strings.TrimPrefix(upstream.URL, "http://")+"/library/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(upRef, img); err != nil {
		t.Fatal(err)
	}
	pushRequests := upstreamRequests.Load()

	s := mirrorServer(t, upstream.URL)
	mirrorAddr := s.localhostAddr()
	ref := mirrorAddr + "/docker.io/library/app:v1"

	t.Run("crane", func(t *testing.T) {
		if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != want.String() {
			t.Errorf("crane digest = %s, want %s", got, want)
		}
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, crane, "pull", "--insecure", "--format", "oci", ref, dir)
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("crane pulled %s, want %s", got, want)
		}
		checkLayout(t, dir, img)
		if upstreamRequests.Load() == pushRequests {
			t.Errorf("the mirror served the image without asking the upstream")
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		skopeo := tool(t, "skopeo")
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, skopeo, "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+":v1")
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("skopeo pulled %s, want %s", got, want)
		}
		checkLayout(t, dir, img)
	})

	t.Run("regctl", func(t *testing.T) {
		regctl := tool(t, "regctl")
		// regctl's mirror form (CLIENTS.md): the mirror holds docker.io
		// under a path prefix, and requests carry ?ns=registry-1.docker.io.
		env := []string{"HOME=" + t.TempDir()}
		run(t, env, regctl, "registry", "set", mirrorAddr, "--skip-check", "--tls", "disabled", "--path-prefix", "docker.io")
		run(t, env, regctl, "registry", "set", "docker.io", "--skip-check", "--mirror", mirrorAddr)
		const regctlRef = "docker.io/library/app:v1"
		if got := strings.TrimSpace(run(t, env, regctl, "image", "digest", regctlRef)); got != want.String() {
			t.Errorf("regctl digest = %s, want %s", got, want)
		}
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, env, regctl, "image", "copy", regctlRef, "ocidir://"+dir+":v1")
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("regctl pulled %s, want %s", got, want)
		}
		checkLayout(t, dir, img)
	})

	t.Run("regctl with its own hostname for docker.io", func(t *testing.T) {
		regctl := tool(t, "regctl")
		// regctl sends the hostname it has configured for docker.io as
		// ns, even on a path that names the mirror: the path decides.
		env := []string{"HOME=" + t.TempDir()}
		run(t, env, regctl, "registry", "set", mirrorAddr, "--skip-check", "--tls", "disabled", "--path-prefix", "docker.io")
		run(t, env, regctl, "registry", "set", "docker.io", "--skip-check", "--hostname", "hub.mycorp.invalid", "--mirror", mirrorAddr)
		// The last line: regctl warns about the hostname on stderr.
		out := strings.Fields(run(t, env, regctl, "image", "digest", "docker.io/library/app:v1"))
		if got := out[len(out)-1]; got != want.String() {
			t.Errorf("regctl digest = %s, want %s", got, want)
		}
	})

	t.Run("podman", func(t *testing.T) {
		if got := podmanMirrorPull(t, nil, mirrorAddr, "docker.io/library/app:v1"); got != want.String() {
			t.Errorf("podman pulled %s, want %s", got, want)
		}
	})

	if t.Failed() {
		return
	}

	t.Run("upstream down", func(t *testing.T) {
		upstream.Close()
		upstreamClosed = true
		// Past tag_ttl, so the mirror asks the upstream, fails to reach
		// it, and serves the cached tag as stale.
		time.Sleep(1500 * time.Millisecond)

		if got := strings.TrimSpace(run(t, nil, crane, "digest", "--insecure", ref)); got != want.String() {
			t.Errorf("crane digest with the upstream down = %s, want %s", got, want)
		}
		dir := filepath.Join(t.TempDir(), "layout")
		run(t, nil, crane, "pull", "--insecure", "--format", "oci", ref, dir)
		if got := layoutDigest(t, dir); got != want.String() {
			t.Errorf("crane pulled %s with the upstream down, want %s", got, want)
		}
		checkLayout(t, dir, img)
		byDigest := filepath.Join(t.TempDir(), "by-digest")
		run(t, nil, crane, "pull", "--insecure", "--format", "oci", mirrorAddr+"/docker.io/library/app@"+want.String(), byDigest)
		checkLayout(t, byDigest, img)

		req, err := http.NewRequest(http.MethodHead, s.url("/v2/docker.io/library/app/manifests/v1"), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("HEAD manifest with the upstream down: %s", resp.Status)
		}
		if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
			t.Errorf("Docker-Content-Digest = %s, want %s", got, want)
		}
		if w := resp.Header.Get("Warning"); !strings.Contains(w, "110") {
			t.Errorf("stale answer carries Warning %q, want 110", w)
		}
	})
}
