package registry

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/caddy-oci/caddy-oci/cache"
)

// testClock is a clock tests move by hand.
type testClock struct{ ns atomic.Int64 }

func (c *testClock) Now() time.Time      { return time.Unix(0, c.ns.Load()) }
func (c *testClock) Add(d time.Duration) { c.ns.Add(int64(d)) }
func newTestClock() *testClock           { c := &testClock{}; c.ns.Store(time.Now().UnixNano()); return c }

type mirrorEnv struct {
	*testRegistry
	up     *fakeUpstream
	mirror *Mirror
	clock  *testClock
}

// waitUnheld waits until no mirror's upstream is held by a 429 it
// answered (upstream.Client.HoldUntil), on the real clock the holds keep.
func (env *mirrorEnv) waitUnheld() {
	for _, m := range env.h.mirrors {
		time.Sleep(time.Until(m.client.HoldUntil()))
	}
}

// newMirrorEnv is a registry with docker.io mirrored from a fake upstream
// (default namespace, host alias docker.mirror.test) and "team" local.
func newMirrorEnv(t testing.TB, mod ...func(*MirrorConfig)) *mirrorEnv {
	t.Helper()
	up := newFakeUpstream(t)
	mc := MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true, Hosts: []string{"docker.mirror.test"}}
	for _, m := range mod {
		m(&mc)
	}
	m, err := NewMirror(mc)
	if err != nil {
		t.Fatal(err)
	}
	clock := newTestClock()
	m.now = clock.Now
	tr := newTestRegistry(t, func(c *Config) {
		c.Mirrors = []*Mirror{m}
		c.LocalPrefixes = []string{"team"}
	})
	return &mirrorEnv{testRegistry: tr, up: up, mirror: m, clock: clock}
}

func randomImage(t testing.TB, size int64, layers int64) v1.Image {
	t.Helper()
	img, err := random.Image(size, layers)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func layerOf(t testing.TB, img v1.Image) (string, []byte) {
	t.Helper()
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	d, _ := ls[0].Digest()
	rc, _ := ls[0].Compressed()
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	return d.String(), b
}

func TestMirrorNameForms(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/debian", "bookworm", img)
	want, _ := img.Digest()
	layer, data := layerOf(t, img)

	forms := []struct {
		path string
		host string
		ns   string
	}{
		{path: "/v2/docker.io/library/debian/%s"},
		{path: "/docker.io/v2/library/debian/%s?ns=docker.io", ns: "docker.io"},
		{path: "/docker.io/v2/debian/%s"},
		{path: "/v2/library/debian/%s?ns=docker.io", ns: "docker.io"},
		{path: "/v2/library/debian/%s?ns=registry-1.docker.io", ns: "registry-1.docker.io"},
		{path: "/v2/docker.io/library/debian/%s?ns=registry-1.docker.io", ns: "registry-1.docker.io"},
		{path: "/v2/library/debian/%s"},
		{path: "/v2/debian/%s"},
		{path: "/v2/debian/%s", host: "docker.mirror.test:5000"},
	}
	for _, f := range forms {
		for _, what := range []string{"manifests/bookworm", "blobs/" + layer} {
			p := sprintfPath(f.path, what)
			var hdr []string
			if f.host != "" {
				hdr = []string{"Host", f.host}
			}
			resp := env.do(http.MethodGet, p, nil, hdr...)
			env.wantStatus(resp, http.StatusOK)
			if what == "manifests/bookworm" {
				if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
					t.Errorf("%s: digest %s, want %s", p, got, want)
				}
				if got := sha256.Sum256(resp.body); "sha256:"+hex.EncodeToString(got[:]) != want.String() {
					t.Errorf("%s: bytes do not hash to upstream's digest", p)
				}
			} else if !bytes.Equal(resp.body, data) {
				t.Errorf("%s: blob differs", p)
			}
			if got := resp.Header.Get("OCI-Namespace"); got != f.ns {
				t.Errorf("%s: OCI-Namespace %q, want %q", p, got, f.ns)
			}
		}
	}
	// One fetch of each, however many forms asked.
	if n := env.up.count("GET manifests"); n != 1 {
		t.Errorf("upstream manifest GETs = %d, want 1", n)
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
	// Pings of the prefix forms.
	for _, p := range []string{"/v2/docker.io/", "/v2/docker.io", "/docker.io/v2/", "/registry-1.docker.io/v2/"} {
		env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusOK)
	}
	// An upstream not served here: NAME_UNKNOWN, so containerd tries its next host.
	env.wantError(env.do(http.MethodGet, "/v2/library/debian/manifests/bookworm?ns=gcr.io", nil), http.StatusNotFound, CodeNameUnknown)
	env.wantError(env.do(http.MethodGet, "/gcr.io/v2/library/debian/manifests/bookworm", nil), http.StatusNotFound, CodeNotFound)
	// Read-only.
	env.wantError(env.do(http.MethodPost, "/v2/docker.io/library/debian/blobs/uploads/", nil), http.StatusMethodNotAllowed, CodeUnsupported)
	env.wantError(env.do(http.MethodPut, "/v2/library/debian/manifests/x", []byte("{}")), http.StatusMethodNotAllowed, CodeUnsupported)
	env.wantError(env.do(http.MethodDelete, "/v2/docker.io/library/debian/manifests/bookworm", nil), http.StatusMethodNotAllowed, CodeUnsupported)
	// Local prefixes stay pushable despite the default mirror.
	env.pushBlob("team/app", []byte("local"))
	if _, err := env.store.HasBlob(t.Context(), "team/app", cache.FromBytes(cache.SHA256, []byte("local"))); err != nil {
		t.Fatalf("local push: %v", err)
	}
}

func sprintfPath(format, what string) string {
	return string(bytes.Replace([]byte(format), []byte("%s"), []byte(what), 1))
}

// get starts a GET and returns the response with its body unread.
func (env *mirrorEnv) get(ctx context.Context, path string, hdr ...string) (*http.Response, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, env.srv.URL+path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	return env.srv.Client().Do(req)
}

// heldColdBlob is a mirror whose upstream holds a 1 MiB layer's transfer
// after its first piece until gate closes: the layer's path and bytes.
func heldColdBlob(t *testing.T) (env *mirrorEnv, path string, data []byte, gate chan struct{}) {
	env = newMirrorEnv(t)
	img := randomImage(t, 1<<20, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	gate = make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	return env, "/v2/docker.io/library/app/blobs/" + layer, data, gate
}

func TestMirrorConcurrentColdBlob(t *testing.T) {
	env, path, data, gate := heldColdBlob(t)

	const clients = 8
	type result struct {
		body []byte
		err  error
	}
	results := make(chan result, clients)
	firstBytes := make(chan struct{}, clients)
	for range clients {
		go func() {
			resp, err := env.get(context.Background(), path)
			if err != nil {
				results <- result{err: err}
				firstBytes <- struct{}{}
				return
			}
			defer resp.Body.Close()
			one := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, one); err != nil {
				results <- result{err: err}
				firstBytes <- struct{}{}
				return
			}
			// First byte here while upstream is held after its first chunk.
			firstBytes <- struct{}{}
			rest, err := io.ReadAll(resp.Body)
			results <- result{body: append(one, rest...), err: err}
		}()
	}
	for range clients {
		<-firstBytes
	}
	if env.up.bytesSent() >= int64(len(data)) {
		t.Fatal("upstream finished before the clients got their first byte")
	}
	close(gate)
	for range clients {
		r := <-results
		if r.err != nil || !bytes.Equal(r.body, data) {
			t.Fatalf("client got %d bytes, err %v", len(r.body), r.err)
		}
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
	if got := env.up.bytesSent(); got != int64(len(data)) {
		t.Fatalf("upstream sent %d bytes for a %d-byte blob", got, len(data))
	}
}

// A GET that finds a fill of its digest running for its own repository
// joins it without asking upstream again: that fill's GET asked for this
// very name. (Another repository's fill still needs upstream's word for
// this one: the strictBlobs tests of mirror_auth_test.go.)
func TestMirrorJoinsOwnRepositoryFill(t *testing.T) {
	env, path, data, gate := heldColdBlob(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := env.get(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Body.Close()
	one := make([]byte, 1)
	if _, err := io.ReadFull(first.Body, one); err != nil {
		t.Fatal(err)
	}
	second, err := env.get(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Body.Close()
	if _, err := io.ReadFull(second.Body, one); err != nil {
		t.Fatal(err)
	}
	if n := env.up.count("HEAD blobs"); n != 0 {
		t.Errorf("upstream blob HEADs = %d for a second GET beside its repository's fill, want 0", n)
	}
	close(gate)
	for _, resp := range []*http.Response{first, second} {
		rest, err := io.ReadAll(resp.Body)
		if err != nil || !bytes.Equal(append([]byte{data[0]}, rest...), data) {
			t.Fatalf("got %d bytes, err %v", 1+len(rest), err)
		}
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Errorf("upstream blob GETs = %d, want 1", n)
	}
}

func TestMirrorClientDisconnectDoesNotStopFill(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 512<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	gate := make(chan struct{})
	env.up.set(func(u *fakeUpstream) { u.gate = gate })
	path := "/v2/docker.io/library/app/blobs/" + layer

	ctx, cancel := context.WithCancel(context.Background())
	resp, err := env.get(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	close(gate)
	// Joins the fill still running, or finds it done: never a second fetch.
	got := env.do(http.MethodGet, path, nil)
	env.wantStatus(got, http.StatusOK)
	if !bytes.Equal(got.body, data) {
		t.Fatal("blob differs")
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
}

func TestMirrorBrokenBlobs(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(u *fakeUpstream)
	}{
		{"digest mismatch", func(u *fakeUpstream) { u.corrupt = true }},
		{"upstream breaks mid-blob", func(u *fakeUpstream) { u.failMid = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newMirrorEnv(t)
			img := randomImage(t, 256<<10, 1)
			env.up.pushImage("library/app", "v1", img)
			layer, data := layerOf(t, img)
			env.up.set(tc.set)
			resp, err := env.get(context.Background(), "/v2/docker.io/library/app/blobs/"+layer)
			if err == nil {
				body, rerr := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK && rerr == nil && len(body) == len(data) {
					t.Fatalf("a broken upstream blob was served as a success")
				}
				if resp.StatusCode == http.StatusOK && rerr == nil {
					t.Fatalf("short 200: %d of %d bytes without an error", len(body), len(data))
				}
			}
			d, _ := cache.ParseDigest(layer)
			if _, err := env.store.StatBlob(t.Context(), d); !errors.Is(err, cache.ErrBlobUnknown) {
				t.Fatalf("broken blob stored: %v", err)
			}
			// Upstream healthy again: the next pull fetches afresh and works.
			env.up.set(func(u *fakeUpstream) { u.corrupt, u.failMid = false, false })
			for {
				got := env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+layer, nil)
				if got.StatusCode == http.StatusOK && bytes.Equal(got.body, data) {
					break
				}
				// The failed fill may still be on its way out of the map.
				if env.up.count("GET blobs") > 5 {
					t.Fatalf("no recovery: %d %s", got.StatusCode, got.body)
				}
			}
		})
	}
}

func TestMirrorRangeOnColdBlob(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 256<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	resp := env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+layer, nil, "Range", "bytes=100-199")
	env.wantStatus(resp, http.StatusPartialContent)
	if !bytes.Equal(resp.body, data[100:200]) {
		t.Fatal("range bytes differ")
	}
	d, _ := cache.ParseDigest(layer)
	full := env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+layer, nil)
	if !bytes.Equal(full.body, data) {
		t.Fatal("blob differs")
	}
	// Clients get the last byte once it is verified, before the commit:
	// wait for the fill to finish before looking at the store.
	if f := env.store.Filling(t.Context(), d); f != nil {
		<-f.Done()
	}
	if _, err := env.store.HasBlob(t.Context(), "docker.io/library/app", d); err != nil {
		t.Fatal(err)
	}
	if n := env.up.count("GET blobs"); n != 1 {
		t.Fatalf("upstream blob GETs = %d, want 1", n)
	}
}

// TestMirrorRangeOnColdCorruptBlob: a range of a cold blob whose upstream
// bytes fail the digest check is never answered with those bytes, and
// nothing is stored.
func TestMirrorRangeOnColdCorruptBlob(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 256<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, _ := layerOf(t, img)
	env.up.set(func(u *fakeUpstream) { u.corrupt = true })
	resp := env.do(http.MethodGet, "/v2/docker.io/library/app/blobs/"+layer, nil, "Range", "bytes=0-99")
	if resp.StatusCode < 500 {
		t.Fatalf("a range of a corrupt cold blob: %d, want an upstream error", resp.StatusCode)
	}
	d, _ := cache.ParseDigest(layer)
	if _, err := env.store.StatBlob(t.Context(), d); !errors.Is(err, cache.ErrBlobUnknown) {
		t.Fatalf("corrupt blob stored: %v", err)
	}
}

func TestMirrorTagTTL(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 1024, 1)
	env.up.pushImage("library/app", "v1", img)
	path := "/v2/library/app/manifests/v1"
	env.wantStatus(env.do(http.MethodGet, path, nil), http.StatusOK)
	before := env.up.total()
	for range 2000 {
		resp := env.do(http.MethodGet, path, nil)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("warm pull: %d", resp.StatusCode)
		}
	}
	if n := env.up.total() - before; n != 0 {
		t.Fatalf("2,000 warm tag pulls caused %d upstream requests", n)
	}
	// Past the TTL: one HEAD, no GET, while the tag has not moved.
	env.clock.Add(DefaultTagTTL + time.Second)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp := env.do(http.MethodGet, path, nil)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("revalidated pull: %d", resp.StatusCode)
			}
		}()
	}
	wg.Wait()
	if h, g := env.up.count("HEAD manifests"), env.up.count("GET manifests"); h != 1 || g != 1 {
		t.Fatalf("after TTL: %d HEADs and %d GETs upstream, want 1 and 1 (the first fetch)", h, g)
	}
	// The tag moves upstream: HEAD sees it, one GET follows.
	img2 := randomImage(t, 1024, 1)
	env.up.pushImage("library/app", "v1", img2)
	env.clock.Add(DefaultTagTTL + time.Second)
	resp := env.do(http.MethodGet, path, nil)
	want, _ := img2.Digest()
	if got := resp.Header.Get("Docker-Content-Digest"); got != want.String() {
		t.Fatalf("moved tag: %s, want %s", got, want)
	}
	if h, g := env.up.count("HEAD manifests"), env.up.count("GET manifests"); h != 2 || g != 2 {
		t.Fatalf("moved tag: %d HEADs and %d GETs", h, g)
	}
}

func TestMirrorStaleIfError(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 2048, 2)
	env.up.pushImage("library/app", "v1", img)
	dg, _ := img.Digest()
	m, _ := img.Manifest()
	paths := []string{"/v2/library/app/manifests/v1", "/v2/docker.io/library/app/manifests/" + dg.String(),
		"/v2/library/app/blobs/" + m.Config.Digest.String()}
	for _, l := range m.Layers {
		paths = append(paths, "/v2/library/app/blobs/"+l.Digest.String())
	}
	for _, p := range paths {
		env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusOK)
	}
	env.up.srv.Close() // upstream down
	env.clock.Add(DefaultTagTTL + time.Hour)
	for _, p := range paths {
		resp := env.do(http.MethodGet, p, nil)
		env.wantStatus(resp, http.StatusOK)
		if p == paths[0] {
			if resp.Header.Get("Warning") == "" {
				t.Error("stale tag served without a Warning")
			}
			if resp.Header.Get("Docker-Content-Digest") != dg.String() {
				t.Error("stale tag digest differs")
			}
		}
	}
	// Nothing cached: a spec error naming upstream's failure.
	resp := env.do(http.MethodGet, "/v2/library/app/manifests/v2", nil)
	env.wantError(resp, http.StatusBadGateway, CodeUnknown)
	// Past the stale window the cached tag is no longer served.
	env.clock.Add(DefaultStaleIfError)
	env.wantError(env.do(http.MethodGet, paths[0], nil), http.StatusBadGateway, CodeUnknown)
}

func TestMirrorUpstreamNotFound(t *testing.T) {
	env := newMirrorEnv(t)
	env.wantError(env.do(http.MethodGet, "/v2/library/nope/manifests/v1", nil), http.StatusNotFound, CodeNameUnknown)
	img := randomImage(t, 1024, 1)
	env.up.pushImage("library/app", "v1", img)
	env.wantError(env.do(http.MethodGet, "/v2/library/app/manifests/v9", nil), http.StatusNotFound, CodeManifestUnknown)
	env.wantError(env.do(http.MethodGet, "/v2/library/app/blobs/sha256:"+hex.EncodeToString(make([]byte, 32)), nil), http.StatusNotFound, CodeBlobUnknown)
}

func TestMirrorOnlyRequestedPlatform(t *testing.T) {
	env := newMirrorEnv(t)
	idx, err := random.Index(1024, 2, 3)
	if err != nil {
		t.Fatal(err)
	}
	env.up.pushIndex("library/multi", "latest", idx)
	resp := env.do(http.MethodGet, "/v2/library/multi/manifests/latest", nil)
	env.wantStatus(resp, http.StatusOK)
	wantIdx, _ := idx.Digest()
	if resp.Header.Get("Docker-Content-Digest") != wantIdx.String() {
		t.Fatal("index digest differs")
	}
	im, _ := idx.IndexManifest()
	child := im.Manifests[1].Digest
	cimg, _ := idx.Image(child)
	cm, _ := cimg.Manifest()
	env.wantStatus(env.do(http.MethodGet, "/v2/library/multi/manifests/"+child.String(), nil), http.StatusOK)
	for _, l := range append([]v1.Descriptor{cm.Config}, cm.Layers...) {
		env.wantStatus(env.do(http.MethodGet, "/v2/library/multi/blobs/"+l.Digest.String(), nil), http.StatusOK)
	}
	if n := env.up.count("GET manifests"); n != 2 {
		t.Errorf("upstream manifest GETs = %d, want 2 (index and one child)", n)
	}
	if n := env.up.count("GET blobs"); n != 1+len(cm.Layers) {
		t.Errorf("upstream blob GETs = %d, want %d", n, 1+len(cm.Layers))
	}
}

func TestMirrorTokenAuth(t *testing.T) {
	for _, tc := range []struct {
		name       string
		user, pass string // upstream's
		cfgUser    string // mirror's
		cfgPass    string
		want       int
	}{
		{name: "anonymous", want: http.StatusOK},
		{name: "credentials", user: "bob", pass: "s3cret", cfgUser: "bob", cfgPass: "s3cret", want: http.StatusOK},
		{name: "wrong credentials", user: "bob", pass: "s3cret", cfgUser: "bob", cfgPass: "nope", want: http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newMirrorEnv(t, func(c *MirrorConfig) { c.Username, c.Password = tc.cfgUser, tc.cfgPass })
			img := randomImage(t, 1024, 2)
			env.up.pushImage("library/app", "v1", img)
			env.up.set(func(u *fakeUpstream) { u.tokens, u.user, u.pass, u.tokenTTL = true, tc.user, tc.pass, 300 })
			resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, resp.body)
			}
			if tc.want != http.StatusOK {
				return
			}
			m, _ := img.Manifest()
			for _, l := range m.Layers {
				env.wantStatus(env.do(http.MethodGet, "/v2/library/app/blobs/"+l.Digest.String(), nil), http.StatusOK)
			}
			if n := env.up.count("GET token"); n != 1 {
				t.Fatalf("token requests = %d, want 1 (reused until expiry)", n)
			}
		})
	}
}

func TestMirrorRetriesAndFailover(t *testing.T) {
	t.Run("429 with Retry-After", func(t *testing.T) {
		env := newMirrorEnv(t)
		img := randomImage(t, 1024, 1)
		env.up.pushImage("library/app", "v1", img)
		env.up.set(func(u *fakeUpstream) { u.failN, u.failStatus, u.retryAfter = 2, http.StatusTooManyRequests, "0" })
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
		if n := env.up.count("GET manifests"); n != 3 {
			t.Fatalf("GET attempts = %d, want 3", n)
		}
	})
	t.Run("503 then the next URL", func(t *testing.T) {
		good := newFakeUpstream(t)
		env := newMirrorEnv(t, func(c *MirrorConfig) { c.Upstreams = append(c.Upstreams, good.srv.URL) })
		img := randomImage(t, 1024, 1)
		good.pushImage("library/app", "v1", img)
		env.up.set(func(u *fakeUpstream) { u.failN, u.failStatus = 100, http.StatusServiceUnavailable })
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
		if n := env.up.count("GET manifests"); n != 3 {
			t.Fatalf("first upstream tried %d times, want 3", n)
		}
	})
	t.Run("connection refused then the next URL", func(t *testing.T) {
		good := newFakeUpstream(t)
		down := newFakeUpstream(t)
		down.srv.Close()
		env := newMirrorEnv(t, func(c *MirrorConfig) { c.Upstreams = []string{down.srv.URL, good.srv.URL} })
		img := randomImage(t, 1024, 1)
		good.pushImage("library/app", "v1", img)
		layer, data := layerOf(t, img)
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
		got := env.do(http.MethodGet, "/v2/library/app/blobs/"+layer, nil)
		if !bytes.Equal(got.body, data) {
			t.Fatal("blob differs")
		}
	})
}

// TestNSKeptInLinks: a request with ns gets Location and Link headers
// that keep it, so following them resolves the same repository (here the
// local one: ns names this server), and bodies name the repository as
// the client typed it.
func TestNSKeptInLinks(t *testing.T) {
	env := newMirrorEnv(t)
	ns := url.Values{"ns": {strings.TrimPrefix(env.srv.URL, "http://")}}.Encode()
	resp := env.do(http.MethodPost, "/v2/app/blobs/uploads/?"+ns, nil)
	env.wantStatus(resp, http.StatusAccepted)
	loc := resp.Header.Get("Location")
	if !strings.HasPrefix(loc, "/v2/app/blobs/uploads/") || !strings.HasSuffix(loc, "?"+ns) {
		t.Fatalf("upload Location %q lost ns", loc)
	}
	push := func(data []byte) string {
		d := cache.FromBytes(cache.SHA256, data).String()
		resp := env.do(http.MethodPost, "/v2/app/blobs/uploads/?"+ns, nil)
		env.wantStatus(resp, http.StatusAccepted)
		resp = env.do(http.MethodPut, resp.Header.Get("Location")+"&digest="+d, data)
		env.wantStatus(resp, http.StatusCreated)
		if got, want := resp.Header.Get("Location"), "/v2/app/blobs/"+d+"?"+ns; got != want {
			t.Errorf("blob Location %q, want %q", got, want)
		}
		return d
	}
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	man := fmt.Appendf(nil, `{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[]}`,
		mtManifest, push(cfg), len(cfg))
	for _, tag := range []string{"a", "b"} {
		resp := env.do(http.MethodPut, "/v2/app/manifests/"+tag+"?"+ns, man, "Content-Type", mtManifest)
		env.wantStatus(resp, http.StatusCreated)
		if loc := resp.Header.Get("Location"); !strings.HasSuffix(loc, "?"+ns) {
			t.Errorf("manifest Location %q lost ns", loc)
		}
	}
	// Without ns, /v2/app is the default mirror's docker.io/library/app:
	// everything went to the local repository.
	if n := env.up.total(); n != 0 {
		t.Errorf("the upstream was asked %d times", n)
	}
	resp = env.do(http.MethodGet, "/v2/app/tags/list?n=1&"+ns, nil)
	env.wantStatus(resp, http.StatusOK)
	if got, want := resp.Header.Get("Link"), `</v2/app/tags/list?`+ns+`&n=1&last=a>; rel="next"`; got != want {
		t.Errorf("Link %q, want %q", got, want)
	}
	if !bytes.Contains(resp.body, []byte(`{"name":"app","tags":["a"]}`)) {
		t.Errorf("tags: %s", resp.body)
	}
}

func TestMirrorTagsAndReferrers(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 1024, 1)
	for _, tag := range []string{"a", "b", "c"} {
		env.up.pushImage("library/app", tag, img)
	}
	resp := env.do(http.MethodGet, "/v2/library/app/tags/list", nil)
	env.wantStatus(resp, http.StatusOK)
	if !bytes.Contains(resp.body, []byte(`"tags":["a","b","c"]`)) || !bytes.Contains(resp.body, []byte(`"name":"library/app"`)) {
		t.Fatalf("tags: %s", resp.body)
	}
	dg, _ := img.Digest()
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/referrers/"+dg.String(), nil), http.StatusOK)
	// Upstream down: the tags the mirror has seen.
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/b", nil), http.StatusOK)
	env.up.srv.Close()
	resp = env.do(http.MethodGet, "/v2/library/app/tags/list", nil)
	env.wantStatus(resp, http.StatusOK)
	if !bytes.Contains(resp.body, []byte(`"tags":["b"]`)) || resp.Header.Get("Warning") == "" {
		t.Fatalf("stale tags: %s %v", resp.body, resp.Header)
	}
	resp = env.do(http.MethodGet, "/v2/library/app/referrers/"+dg.String(), nil)
	env.wantStatus(resp, http.StatusOK)
}

func TestMirrorBlobHeadCold(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	resp := env.do(http.MethodHead, "/v2/library/app/blobs/"+layer, nil)
	env.wantStatus(resp, http.StatusOK)
	if resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Fatalf("Content-Length %s", resp.Header.Get("Content-Length"))
	}
	if env.up.count("GET blobs") != 0 {
		t.Fatal("a HEAD fetched the blob")
	}
}

// TestMirrorBlobFileRemovedByHand: a cached blob whose file was removed
// behind the store's back is a miss again, for a HEAD as for a GET: the
// HEAD asks upstream, the GET fetches it again and serves it, and the
// cache holds it once more.
func TestMirrorBlobFileRemovedByHand(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	p := "/v2/library/app/blobs/" + layer
	env.pullBlob("library/app", layer)
	d, _ := cache.ParseDigest(layer)
	if err := os.Remove(filepath.Join(env.dir, "blobs", string(d.Algorithm), d.Hex[:2], d.Hex)); err != nil {
		t.Fatal(err)
	}
	gets := env.up.count("GET blobs")
	resp := env.do(http.MethodHead, p, nil)
	env.wantStatus(resp, http.StatusOK)
	if resp.Header.Get("Content-Length") != strconv.Itoa(len(data)) {
		t.Fatalf("HEAD: Content-Length %s", resp.Header.Get("Content-Length"))
	}
	if got := env.pullBlob("library/app", layer); !bytes.Equal(got, data) {
		t.Fatalf("GET of a blob whose file was removed: %d bytes", len(got))
	}
	if n := env.up.count("GET blobs"); n != gets+1 {
		t.Fatalf("upstream blob GETs: %d, want %d (one refetch)", n, gets+1)
	}
	if _, err := env.store.StatBlob(context.Background(), d); err != nil {
		t.Fatalf("the refetched blob is not cached: %v", err)
	}
}
