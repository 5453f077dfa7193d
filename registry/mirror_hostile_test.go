package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache"
)

// Upstreams that misbehave on purpose: each test serves what a broken or
// hostile registry would, through real HTTP, and checks what the mirror's
// client gets and what the store keeps.

// newHostileEnv is a mirror env whose upstream is h.
func newHostileEnv(t *testing.T, h http.Handler, mod ...func(*MirrorConfig)) (*mirrorEnv, *httptest.Server) {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	mods := append([]func(*MirrorConfig){func(c *MirrorConfig) { c.Upstreams = []string{s.URL} }}, mod...)
	return newMirrorEnv(t, mods...), s
}

// goodManifest is a valid OCI image manifest (its blobs need not exist:
// a mirror keeps what upstream has).
var goodManifest = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
	`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("c", 64) + `","size":2},"layers":[]}`)

func digestOf(b []byte) string { return cache.FromBytes(cache.SHA256, b).String() }

// manifestAnswer is how a test upstream answers a manifest GET.
type manifestAnswer struct {
	contentType   string // "-" for none
	body          []byte
	digest        string // Docker-Content-Digest; "" for none
	contentLength string // "" for the true length, "-" for none (chunked)
}

func (a manifestAnswer) serve(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	if a.contentType != "-" {
		hd.Set("Content-Type", a.contentType)
	}
	if a.digest != "" {
		hd.Set("Docker-Content-Digest", a.digest)
	}
	switch a.contentLength {
	case "":
		hd.Set("Content-Length", strconv.Itoa(len(a.body)))
	case "-":
	default:
		hd.Set("Content-Length", a.contentLength)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if a.contentLength == "-" {
		w.(http.Flusher).Flush() // headers out without a length: chunked
	}
	_, _ = w.Write(a.body)
}

// TestMirrorRefusesInvalidManifest: what upstream sends for a tag is
// stored and served only when it is exactly one manifest; anything else is
// a 502 and leaves the store as it was.
func TestMirrorRefusesInvalidManifest(t *testing.T) {
	half := goodManifest[:len(goodManifest)/2]
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	noType := []byte(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("c", 64) + `","size":2},"layers":[]}`)
	twice := append(append([]byte{}, goodManifest...), goodManifest...)
	garbage := append(append([]byte{}, goodManifest...), "<html>"...)
	array := append(append([]byte("["), goodManifest...), ']')
	tests := []struct {
		name string
		a    manifestAnswer
	}{
		{"truncated, chunked, no digest", manifestAnswer{contentType: MediaTypeOCIManifest, body: half, contentLength: "-"}},
		{"truncated with its own length", manifestAnswer{contentType: MediaTypeOCIManifest, body: half}},
		{"Content-Length short of the body", manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest, contentLength: strconv.Itoa(len(goodManifest) - 10)}},
		{"Content-Length beyond the body", manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest, contentLength: strconv.Itoa(len(goodManifest) + 10)}},
		{"Content-Type of a config", manifestAnswer{contentType: "application/vnd.oci.image.config.v1+json", body: goodManifest}},
		{"Content-Type text/html", manifestAnswer{contentType: "text/html", body: goodManifest}},
		{"Content-Type and mediaType disagree", manifestAnswer{contentType: MediaTypeOCIIndex, body: goodManifest}},
		{"generic Content-Type, no mediaType", manifestAnswer{contentType: "application/json", body: noType}},
		{"no Content-Type, no mediaType", manifestAnswer{contentType: "-", body: noType}},
		{"two objects", manifestAnswer{contentType: MediaTypeOCIManifest, body: twice}},
		{"trailing garbage", manifestAnswer{contentType: MediaTypeOCIManifest, body: garbage}},
		{"an array", manifestAnswer{contentType: MediaTypeOCIManifest, body: array}},
		{"empty", manifestAnswer{contentType: MediaTypeOCIManifest, body: []byte{}}},
		{"digest of another manifest", manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest, digest: digestOf(index)}},
		{"digest header not a digest", manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest, digest: "sha256:nothex"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, _ := newHostileEnv(t, http.HandlerFunc(tt.a.serve))
			env.wantError(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusBadGateway, CodeUnknown)
			if ti, err := env.store.TagInfo(t.Context(), "docker.io/library/app", "v1"); err == nil {
				t.Fatalf("the tag was stored (digest %s)", ti.Digest)
			}
			if _, _, err := env.store.GetManifest(t.Context(), "docker.io/library/app", cache.FromBytes(cache.SHA256, tt.a.body)); err == nil {
				t.Fatal("the body was stored")
			}
		})
	}
	t.Run("valid answers are served byte for byte", func(t *testing.T) {
		for _, a := range []manifestAnswer{
			{contentType: MediaTypeOCIManifest, body: goodManifest, digest: digestOf(goodManifest)},
			{contentType: MediaTypeOCIManifest, body: goodManifest, contentLength: "-"},
			{contentType: "application/json", body: goodManifest},
			{contentType: MediaTypeOCIIndex + "; charset=utf-8", body: index},
			{contentType: MediaTypeOCIManifest, body: noType},
		} {
			env, _ := newHostileEnv(t, http.HandlerFunc(a.serve))
			resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
			env.wantStatus(resp, http.StatusOK)
			if !bytes.Equal(resp.body, a.body) || resp.Header.Get("Docker-Content-Digest") != digestOf(a.body) {
				t.Fatalf("served %q (%s)", resp.body, resp.Header.Get("Docker-Content-Digest"))
			}
		}
	})
}

// TestMirrorBrokenManifestServesStale: a cached tag past its TTL is still
// served (marked stale) when upstream sends a broken manifest for it.
func TestMirrorBrokenManifestServesStale(t *testing.T) {
	var broken atomic.Bool
	other := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !broken.Load() {
			manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest}.serve(w, r)
			return
		}
		// The tag moved, and its new manifest comes truncated.
		w.Header().Set("Docker-Content-Digest", digestOf(other))
		manifestAnswer{contentType: MediaTypeOCIIndex, body: other[:20], contentLength: "-"}.serve(w, r)
	}))
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
	broken.Store(true)
	env.clock.Add(DefaultTagTTL + time.Minute)
	resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
	env.wantStatus(resp, http.StatusOK)
	if !bytes.Equal(resp.body, goodManifest) || resp.Header.Get("Warning") == "" {
		t.Fatalf("served %q, Warning %q; want the cached manifest, marked stale", resp.body, resp.Header.Get("Warning"))
	}
}

// TestMirrorRedirects: upstream's redirects of manifests, tag lists and
// referrers are not followed; a blob's is, without the mirror's
// credentials on another port.
func TestMirrorRedirects(t *testing.T) {
	var internalHits atomic.Int32
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		internalHits.Add(1)
		switch {
		case strings.Contains(r.URL.Path, "/manifests/"):
			manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest}.serve(w, r)
		case strings.Contains(r.URL.Path, "/tags/"):
			_, _ = w.Write([]byte(`{"name":"library/app","tags":["internal-secret"]}`))
		default:
			w.Header().Set("Content-Type", MediaTypeOCIIndex)
			_, _ = w.Write([]byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"x":"internal-secret"}}`))
		}
	}))
	defer internal.Close()
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, internal.URL+r.URL.Path, http.StatusTemporaryRedirect)
	}))
	env.wantError(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusBadGateway, CodeUnknown)
	resp := env.do(http.MethodGet, "/v2/library/app/tags/list", nil)
	if bytes.Contains(resp.body, []byte("internal-secret")) {
		t.Fatalf("tag list from the redirect target: %s", resp.body)
	}
	env.wantError(resp, http.StatusBadGateway, CodeUnknown)
	resp = env.do(http.MethodGet, "/v2/library/app/referrers/"+digestOf(goodManifest), nil)
	env.wantStatus(resp, http.StatusOK) // the store's own (empty) index
	if bytes.Contains(resp.body, []byte("internal-secret")) {
		t.Fatalf("referrers from the redirect target: %s", resp.body)
	}
	if n := internalHits.Load(); n != 0 {
		t.Fatalf("the redirect target was asked %d times", n)
	}
}

func TestMirrorBlobRedirectDropsCredentials(t *testing.T) {
	blob := []byte("a blob that lives in storage")
	var storageAuth atomic.Value
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		storageAuth.Store(r.Header.Get("Authorization"))
		_, _ = w.Write(blob)
	}))
	defer storage.Close()
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "bob" || p != "pw" {
			w.Header().Set("WWW-Authenticate", `Basic realm="upstream"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		http.Redirect(w, r, storage.URL+"/blob", http.StatusTemporaryRedirect)
	}), func(c *MirrorConfig) { c.Username, c.Password = "bob", "pw" })
	resp := env.do(http.MethodGet, "/v2/library/app/blobs/"+digestOf(blob), nil)
	env.wantStatus(resp, http.StatusOK)
	if !bytes.Equal(resp.body, blob) {
		t.Fatalf("blob %q", resp.body)
	}
	if got, _ := storageAuth.Load().(string); got != "" {
		t.Fatalf("storage on another port got Authorization %q", got)
	}
}

// TestMirrorErrorsHideUpstream: what the client reads never names where
// upstream lives or what it (or the network) said.
func TestMirrorErrorsHideUpstream(t *testing.T) {
	blob := "/v2/library/app/blobs/sha256:" + strings.Repeat("d", 64)
	cases := []struct {
		name     string
		upstream http.HandlerFunc // nil: nothing listens
		requests [][2]string      // method, path
	}{
		{name: "unreachable", requests: [][2]string{
			{http.MethodGet, "/v2/library/app/manifests/v1"},
			{http.MethodGet, "/v2/library/app/manifests/" + digestOf(goodManifest)},
			{http.MethodGet, blob},
			{http.MethodHead, blob},
			{http.MethodGet, "/v2/library/app/tags/list"},
			{http.MethodGet, "/v2/library/app/referrers/" + digestOf(goodManifest)},
			{http.MethodPut, "/v2/library/app/manifests/v1"},
			{http.MethodPost, "/v2/library/app/blobs/uploads/"},
		}},
		{name: "5xx with details", upstream: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"errors":[{"code":"INTERNAL_DETAIL","message":"db at 10.1.2.3 failed"}]}`))
		}, requests: [][2]string{
			{http.MethodGet, "/v2/library/app/manifests/v1"},
			{http.MethodGet, blob},
			{http.MethodGet, "/v2/library/app/tags/list"},
		}},
		{name: "404 with an unknown code", upstream: func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(http.StatusNotFound)
			_, _ = w.Write([]byte(`{"errors":[{"code":"INTERNAL_DETAIL","message":"db at 10.1.2.3 has no row"}]}`))
		}, requests: [][2]string{
			{http.MethodGet, "/v2/library/app/manifests/v1"},
			{http.MethodGet, blob},
		}},
		{name: "hostile token realm", upstream: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="ftp://10.1.2.3/token",service="x"`)
			w.WriteHeader(http.StatusUnauthorized)
		}, requests: [][2]string{
			{http.MethodGet, "/v2/library/app/manifests/v1"},
			{http.MethodGet, blob},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.upstream
			if h == nil {
				h = func(http.ResponseWriter, *http.Request) {}
			}
			env, up := newHostileEnv(t, h)
			addr := strings.TrimPrefix(up.URL, "http://")
			if tc.upstream == nil {
				up.Close()
			}
			for _, rq := range tc.requests {
				resp := env.do(rq[0], rq[1], nil)
				if resp.StatusCode < 400 {
					continue // a fallback to the store: nothing of upstream in it
				}
				for _, secret := range []string{addr, "127.0.0.1", "10.1.2.3", "INTERNAL_DETAIL", "dial", "refused", "ftp:"} {
					if bytes.Contains(resp.body, []byte(secret)) {
						t.Errorf("%s %s: %d %s names %q", rq[0], rq[1], resp.StatusCode, resp.body, secret)
					}
				}
			}
		})
	}
}

// TestMirrorTimeouts: an upstream that stalls, before its headers or in
// the middle of a body, is a 504 (Gateway Timeout), not a 502.
func TestMirrorTimeouts(t *testing.T) {
	blob := bytes.Repeat([]byte("x"), 64<<10)
	stall := func(release chan struct{}, midBody bool, body []byte, ct string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if !midBody {
				<-release
				return
			}
			w.Header().Set("Content-Type", ct)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			<-release
		}
	}
	short := func(c *MirrorConfig) {
		c.UpstreamTimeout, c.BlobIdleTimeout = 500*time.Millisecond, 500*time.Millisecond
	}
	tests := []struct {
		name    string
		midBody bool
		body    []byte
		ct      string
		path    string
		hdr     []string
	}{
		{name: "manifest, before headers", path: "/v2/library/app/manifests/v1"},
		{name: "manifest, mid-body", midBody: true, body: goodManifest, ct: MediaTypeOCIManifest, path: "/v2/library/app/manifests/v1"},
		{name: "blob, before headers", path: "/v2/library/app/blobs/" + digestOf(blob)},
		{name: "blob range, mid-body", midBody: true, body: blob, ct: "application/octet-stream",
			path: "/v2/library/app/blobs/" + digestOf(blob), hdr: []string{"Range", "bytes=0-9"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			env, _ := newHostileEnv(t, stall(release, tt.midBody, tt.body, tt.ct), short)
			defer close(release)
			env.wantError(env.do(http.MethodGet, tt.path, nil, tt.hdr...), http.StatusGatewayTimeout, CodeUnknown)
		})
	}
	t.Run("a cached tag is served stale", func(t *testing.T) {
		release := make(chan struct{})
		defer close(release)
		var stalled atomic.Bool
		env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if stalled.Load() {
				<-release
				return
			}
			manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest}.serve(w, r)
		}), func(c *MirrorConfig) { c.UpstreamTimeout = time.Second }) // the first fetch must not time out on a busy machine
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
		stalled.Store(true)
		env.clock.Add(DefaultTagTTL + time.Minute)
		resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
		env.wantStatus(resp, http.StatusOK)
		if resp.Header.Get("Warning") == "" {
			t.Fatal("stale tag served without a Warning")
		}
	})
}

// TestMirrorTooManyRequests: upstream's 429 reaches the client as
// TOOMANYREQUESTS with upstream's Retry-After, read and bounded.
func TestMirrorTooManyRequests(t *testing.T) {
	tests := []struct {
		retryAfter, want string
	}{
		{"120", "120"},
		{"date", "600"}, // ten minutes from when upstream answers
		{"9999999", "3600"},
		{"soon", ""},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.retryAfter, func(t *testing.T) {
			env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				switch tt.retryAfter {
				case "":
				case "date":
					w.Header().Set("Retry-After", time.Now().Add(10*time.Minute).UTC().Format(http.TimeFormat))
				default:
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				w.WriteHeader(http.StatusTooManyRequests)
			}), func(c *MirrorConfig) { c.UpstreamTimeout = 2 * time.Second })
			resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
			env.wantError(resp, http.StatusTooManyRequests, CodeTooManyRequests)
			got := resp.Header.Get("Retry-After")
			if tt.want == "600" {
				// A date has whole seconds and is read against the clock
				// a moment later.
				if n, err := strconv.Atoi(got); err != nil || n < 598 || n > 600 {
					t.Fatalf("Retry-After %q, want about 600", got)
				}
				return
			}
			if got != tt.want {
				t.Fatalf("Retry-After %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("a cached tag is served stale", func(t *testing.T) {
		var limited atomic.Bool
		env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if limited.Load() {
				w.Header().Set("Retry-After", "120")
				w.WriteHeader(http.StatusTooManyRequests)
				return
			}
			manifestAnswer{contentType: MediaTypeOCIManifest, body: goodManifest}.serve(w, r)
		}))
		env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
		limited.Store(true)
		env.clock.Add(DefaultTagTTL + time.Minute)
		resp := env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil)
		env.wantStatus(resp, http.StatusOK)
		if resp.Header.Get("Warning") == "" {
			t.Fatal("stale tag served without a Warning")
		}
	})
}

// TestMirrorReferrersTakeReceivingBudget: an upstream's index of
// referrers is read whole on every GET (not shared among requests), so a
// large one takes its share of the receiving budget (manifestmem.go)
// like a manifest from upstream: while the budget is spent the GET waits,
// and is served once it is free. Before, each GET held up to
// max_manifest_size of it whatever the number of requests.
func TestMirrorReferrersTakeReceivingBudget(t *testing.T) {
	index := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"pad":"` +
		strings.Repeat("p", 1<<20) + `"}}`)
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/referrers/") {
			http.NotFound(w, r)
			return
		}
		manifestAnswer{contentType: MediaTypeOCIIndex, body: index}.serve(w, r)
	}))
	// The whole budget, spent (as by 64 MiB of other large bodies).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	budget := currentManifestLimits.Load().receive
	if err := budget.Acquire(ctx, manifestReceiveBudget); err != nil {
		t.Fatalf("the budget is not free: %v", err)
	}
	done := make(chan response, 1)
	go func() { done <- env.do(http.MethodGet, "/v2/library/app/referrers/"+digestOf(goodManifest), nil) }()
	select {
	case resp := <-done:
		t.Fatalf("served while the budget was spent: %s", resp.Status)
	case <-time.After(300 * time.Millisecond):
	}
	budget.Release(manifestReceiveBudget)
	select {
	case resp := <-done:
		env.wantStatus(resp, http.StatusOK)
		if !bytes.Equal(resp.body, index) {
			t.Fatalf("got %d bytes, not upstream's index", len(resp.body))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not served 10 s after the budget was freed")
	}
}

// TestMirrorSmallBlobStalledMidBody: an upstream sends a small blob's
// length and part of it, then stalls. What the client got is still in the
// server's write buffer when the fill fails, so the answer must be pushed
// out before the transfer is broken: the client sees the 200's headers and
// a body cut short, never a connection closed with no answer at all.
// Tags and referrers pages cut short end the same way.
func TestMirrorSmallBlobStalledMidBody(t *testing.T) {
	blob := []byte(`{"architecture":"amd64","os":"linux"}`)
	release := make(chan struct{})
	defer close(release)
	env, _ := newHostileEnv(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(blob[:len(blob)/2])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), func(c *MirrorConfig) {
		c.UpstreamTimeout, c.BlobIdleTimeout = 500*time.Millisecond, 500*time.Millisecond
	})
	resp, err := env.srv.Client().Get(env.srv.URL + "/v2/library/app/blobs/" + digestOf(blob))
	if err != nil {
		t.Fatalf("no answer at all: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && err == nil {
		t.Fatalf("200 with %d of %d bytes and no error", len(b), len(blob))
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusGatewayTimeout {
		t.Fatalf("answered %s", resp.Status)
	}
}
