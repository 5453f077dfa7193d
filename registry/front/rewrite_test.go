package front

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/registry"
)

// How each form of request reaches the backend, and which never do.
func TestRequestMapping(t *testing.T) {
	f, err := New(Config{Namespaces: []authscope.Namespace{
		{Prefix: "docker.io", Hosts: []string{mirrorHost}},
		{Prefix: "ghcr.io"},
	}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	cases := []struct {
		method, target, host string
		want                 string // backend request URI; "" = not passed on
		status               int    // the front's own answer when want is ""
	}{
		{"GET", "/v2/docker.io/library/debian/manifests/x", "", "/v2/docker.io/library/debian/manifests/x", 0},
		{"GET", "/v2/debian/manifests/x", mirrorHost, "/v2/docker.io/library/debian/manifests/x", 0},
		{"HEAD", "/v2/library/debian/blobs/" + d, mirrorHost + ":8443", "/v2/docker.io/library/debian/blobs/" + d, 0},
		{"GET", "/docker.io/v2/debian/manifests/x", "", "/v2/docker.io/library/debian/manifests/x", 0},
		// A one-component name gets the library prefix however it is
		// spelled: one image, one backend name.
		{"GET", "/v2/docker.io/debian/tags/list?n=10&last=a", "", "/v2/docker.io/library/debian/tags/list?n=10&last=a", 0},
		// regctl sends its own hostname for docker.io in ns: the path
		// already names the namespace.
		{"GET", "/v2/docker.io/library/debian/manifests/x?ns=hub.mycorp.example", "", "/v2/docker.io/library/debian/manifests/x", 0},
		{"GET", "/v2/debian/manifests/x?ns=registry-1.docker.io", "", "/v2/docker.io/library/debian/manifests/x", 0},
		// ns naming the front itself means its own names (containerd sends
		// the image's registry).
		{"GET", "/v2/library/debian/manifests/x?ns=example.com", "", "/v2/library/debian/manifests/x", 0},
		// A name typed under a namespace stays inside it, whatever it
		// looks like.
		{"GET", "/v2/ghcr.io/x/y/manifests/t?ns=docker.io", "", "/v2/docker.io/ghcr.io/x/y/manifests/t", 0},
		{"GET", "/docker.io/v2/ghcr.io/x/manifests/t", "", "/v2/docker.io/ghcr.io/x/manifests/t", 0},
		{"GET", "/v2/team/app/manifests/t", "", "/v2/team/app/manifests/t", 0},
		{"POST", "/v2/app/blobs/uploads/?mount=" + d + "&from=library/debian", mirrorHost, "/v2/docker.io/library/app/blobs/uploads/?from=docker.io%2Flibrary%2Fdebian&mount=" + strings.Replace(d, ":", "%3A", 1), 0},
		{"POST", "/v2/app/blobs/uploads/?mount=" + d + "&from=Bad", mirrorHost, "/v2/docker.io/library/app/blobs/uploads/", 0},
		{"GET", "/docker.io/v2/", "", "/v2/", 0},
		{"GET", "/v2/docker.io/", "", "/v2/", 0},
		{"GET", "/docker.io/v2/_catalog?n=5", "", "/v2/_catalog?n=5", 0},
		{"GET", "/v2/_zot/ext/search", "", "/v2/_zot/ext/search", 0},
		{"GET", "/index.html", "", "/index.html", 0},
		{"GET", "/v2/a/../b/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/v2/%2e%2e/b/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/docker.io/v2/../../b/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/v2/Debian/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/v2/a//b/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/v2/" + strings.Repeat("a/", 130) + "b/manifests/x", "", "", http.StatusBadRequest},
		{"GET", "/v2/debian/manifests/x?ns=quay.io", "", "", http.StatusNotFound},
		{"GET", "/docker.io/v2/nothing", "", "", http.StatusNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			if tc.host != "" {
				r.Host = tc.host
			}
			var got string
			w := httptest.NewRecorder()
			err := f.Serve(w, r, func(w http.ResponseWriter, r *http.Request) error {
				got = r.URL.RequestURI()
				if r.RequestURI != got {
					t.Errorf("RequestURI %q, URL %q", r.RequestURI, got)
				}
				w.WriteHeader(http.StatusOK)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("backend got %q, want %q", got, tc.want)
			}
			if tc.want == "" && w.Code != tc.status {
				t.Errorf("status %d, want %d (%s)", w.Code, tc.status, w.Body)
			}
		})
	}
}

// Upload sessions come back at the client's path, for each way in.
func TestUploadLocation(t *testing.T) {
	rg := newRig(t, nil)
	tok := rg.token(t, "ci", "repository:docker.io/library/tool:pull,push")
	for _, tc := range []struct {
		path, host, prefix string
	}{
		{"/v2/tool/blobs/uploads/", mirrorHost, "/v2/tool/blobs/uploads/"},
		{"/v2/library/tool/blobs/uploads/", "", "/v2/library/tool/blobs/uploads/"},
		{"/docker.io/v2/library/tool/blobs/uploads/", "", "/docker.io/v2/library/tool/blobs/uploads/"},
		{"/v2/docker.io/library/tool/blobs/uploads/", "", "/v2/docker.io/library/tool/blobs/uploads/"},
		{"/v2/tool/blobs/uploads/?ns=docker.io", "", "/v2/tool/blobs/uploads/"},
	} {
		hdr := []string{"Authorization", "Bearer " + tok}
		if tc.host != "" {
			hdr = append(hdr, "Host", tc.host)
		}
		resp, body := rg.do(t, "POST", tc.path, hdr...)
		loc := resp.Header.Get("Location")
		if resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(loc, tc.prefix) || len(loc) == len(tc.prefix) {
			t.Errorf("POST %s: %d, Location %q, want under %q (%s)", tc.path, resp.StatusCode, loc, tc.prefix, body)
			continue
		}
		// The session goes on at the rewritten Location.
		blob := []byte("hello front")
		dg := "sha256:" + cache.FromBytes(cache.SHA256, blob).Hex
		req, _ := http.NewRequest("PUT", rg.front.URL+loc+sep(loc)+"digest="+dg, bytes.NewReader(blob))
		req.Header.Set("Authorization", "Bearer "+tok)
		if tc.host != "" {
			req.Host = tc.host
		}
		put, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		put.Body.Close()
		if put.StatusCode != http.StatusCreated {
			t.Errorf("PUT %s: %d", loc, put.StatusCode)
		}
		if l := put.Header.Get("Location"); strings.Contains(l, "docker.io/library") && !strings.HasPrefix(tc.prefix, "/v2/docker.io/") && !strings.HasPrefix(tc.prefix, "/docker.io/") {
			t.Errorf("PUT %s: Location %q names the backend repository", loc, l)
		}
	}
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

// Tag pages of a registry that paginates with Link (this project's own
// registry as the backend) come back at the client's path, with the name
// the client typed in the body.
func TestTagsListLinkAndName(t *testing.T) {
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	rg := newRig(t, registry.New(registry.Config{Store: store}))
	img, _ := random.Image(512, 1)
	for _, tag := range []string{"a", "b", "c"} {
		rg.seed(t, "docker.io/library/debian:"+tag, img)
	}
	tok := rg.token(t, "", "repository:docker.io/library/debian:pull")
	for _, tc := range []struct {
		path, host, base, name string
	}{
		{"/v2/debian/tags/list?n=1", mirrorHost, "/v2/debian/tags/list", "debian"},
		{"/v2/library/debian/tags/list?n=1", "", "/v2/library/debian/tags/list", "library/debian"},
		{"/docker.io/v2/debian/tags/list?n=1", "", "/docker.io/v2/debian/tags/list", "debian"},
		{"/v2/docker.io/library/debian/tags/list?n=1", "", "/v2/docker.io/library/debian/tags/list", "docker.io/library/debian"},
	} {
		hdr := []string{"Authorization", "Bearer " + tok}
		if tc.host != "" {
			hdr = append(hdr, "Host", tc.host)
		}
		resp, body := rg.do(t, "GET", tc.path, hdr...)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", tc.path, resp.StatusCode, body)
		}
		link := resp.Header.Get("Link")
		if !strings.HasPrefix(link, "<"+tc.base+"?") || !strings.Contains(link, "last=a") || !strings.HasSuffix(link, `rel="next"`) {
			t.Errorf("GET %s: Link %q, want <%s?...last=a...>; rel=\"next\"", tc.path, link, tc.base)
		}
		var list struct {
			Name string   `json:"name"`
			Tags []string `json:"tags"`
		}
		if err := json.Unmarshal(body, &list); err != nil {
			t.Fatal(err)
		}
		if list.Name != tc.name || len(list.Tags) != 1 || list.Tags[0] != "a" {
			t.Errorf("GET %s: %s, want name %q and tag a", tc.path, body, tc.name)
		}
		if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(body)) {
			t.Errorf("GET %s: Content-Length %s for %d bytes", tc.path, cl, len(body))
		}
		// Following the Link gets the next page.
		u := strings.TrimSuffix(strings.TrimPrefix(link, "<"), `>; rel="next"`)
		resp, body = rg.do(t, "GET", u, hdr...)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"b"`) {
			t.Errorf("GET %s (the Link): %d %s", u, resp.StatusCode, body)
		}
	}
}

// The URL rewriting on its own: absolute URLs from a backend that knows
// its own host come back as paths on the front; API URLs the front cannot
// map are dropped (""); other URLs are kept.
func TestViewURL(t *testing.T) {
	v := &view{clientPrefix: "/docker.io/v2/"}
	v.add("docker.io/library/debian", "debian")
	for in, want := range map[string]string{
		"/v2/docker.io/library/debian/blobs/uploads/u1?_state=x":                    "/docker.io/v2/debian/blobs/uploads/u1?_state=x",
		"http://backend:5000/v2/docker.io/library/debian/blobs/uploads/u1?_state=x": "/docker.io/v2/debian/blobs/uploads/u1?_state=x",
		"https://s3.example/bucket/blob?sig=1":                                      "https://s3.example/bucket/blob?sig=1",
		"http://backend:5000/v2/":                                                   "/v2/",
		"http://backend:5000/v2/_catalog?n=1&last=a":                                "/v2/_catalog?n=1&last=a",
		"/v2/docker.io/library/other/blobs/uploads/u1":                              "",
		"http://backend:5000/v2/docker.io/library/debian":                           "",
		"http://backend:5000/v2/docker.io/library/debian/manifests/x/":              "",
		"http://backend:5000/x/../v2/docker.io/library/debian/manifests/x":          "",
		"http://backend:5000//v2/docker.io/library/debian/manifests/x":              "",
		"http://backend:5000/V2/docker.io/library/debian/manifests/x":               "",
		"http://backend:5000/v2%2fdocker.io/library/debian/manifests/x":             "/docker.io/v2/debian/manifests/x",
		"http://backend%zz/v2/":                                                     "",
	} {
		got, ok := v.url(in)
		if !ok {
			got = ""
		}
		if got != want {
			t.Errorf("url(%q) = %q, want %q", in, got, want)
		}
	}
	got, _ := v.link(`</v2/docker.io/library/debian/tags/list?last=a&n=1>; rel="next"`)
	if want := `</docker.io/v2/debian/tags/list?last=a&n=1>; rel="next"`; got != want {
		t.Errorf("link = %q, want %q", got, want)
	}
	if got, ok := v.link(`</v2/docker.io/library/other/tags/list?last=a&n=1>; rel="next"`); ok {
		t.Errorf("link of another repository passed as %q", got)
	}
	if got := replaceName("name docker.io/library/debian, not docker.io/library/debian-slim", "docker.io/library/debian", "debian"); got != "name debian, not docker.io/library/debian-slim" {
		t.Errorf("replaceName: %q", got)
	}
}

// An error whose body names the backend repository reaches the client
// with its name instead.
func TestErrorBodyNames(t *testing.T) {
	f, err := New(Config{Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}}})
	if err != nil {
		t.Fatal(err)
	}
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		w.Header().Set("Content-Length", "999")
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, `{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry","detail":{"name":"docker.io/library/debian"}}]}`)
	})
	srv := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/v2/debian/manifests/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound || strings.Contains(string(body), "docker.io") || !strings.Contains(string(body), `"name":"debian"`) {
		t.Errorf("%d %s", resp.StatusCode, body)
	}
}

// A large blob streams: the client reads its first half megabyte while
// the backend still holds the rest back, and Range and HEAD pass through.
func TestBlobStreams(t *testing.T) {
	const size = 8 << 20
	blob := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	release := make(chan struct{})
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v2/docker.io/library/big/blobs/sha256:"+strings.Repeat("a", 64) {
			http.NotFound(w, r)
			return
		}
		if r.Header.Get("Range") != "" || r.Method == http.MethodHead {
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(blob))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(size))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(blob[:1<<20])
		http.NewResponseController(w).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		_, _ = w.Write(blob[1<<20:])
	})
	be := httptest.NewServer(backend)
	t.Cleanup(be.Close)
	f, err := New(Config{Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}}})
	if err != nil {
		t.Fatal(err)
	}
	fs := httptest.NewServer(f.Middleware(proxyTo(t, be.URL)))
	t.Cleanup(fs.Close)
	path := fs.URL + "/v2/big/blobs/sha256:" + strings.Repeat("a", 64)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	first := make([]byte, 512<<10)
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("first bytes did not arrive while the backend held the rest: %v", err)
	}
	close(release)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(first, rest...); !bytes.Equal(got, blob) || resp.ContentLength != size {
		t.Errorf("got %d bytes (Content-Length %d), want the %d-byte blob", len(got), resp.ContentLength, size)
	}

	req, _ = http.NewRequest(http.MethodGet, path, nil)
	req.Header.Set("Range", "bytes=1000-1999")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	part, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(part, blob[1000:2000]) || resp.Header.Get("Content-Range") != "bytes 1000-1999/"+strconv.Itoa(size) {
		t.Errorf("Range: %d %q, %d bytes", resp.StatusCode, resp.Header.Get("Content-Range"), len(part))
	}

	resp, err = http.Head(path)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
		t.Errorf("HEAD: %d, Content-Length %d", resp.StatusCode, resp.ContentLength)
	}
}

// TestSignInCookiesStayHome: this server's sign-in cookies never reach the
// backend, on API paths or others; other cookies do.
func TestSignInCookiesStayHome(t *testing.T) {
	f, err := New(Config{Namespaces: []authscope.Namespace{{Prefix: "docker.io"}}, Logger: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range []string{"/v2/docker.io/library/debian/manifests/x", "/v2/", "/index.html"} {
		var got string
		next := func(w http.ResponseWriter, r *http.Request) error {
			got = r.Header.Get("Cookie")
			return nil
		}
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.Header.Set("Cookie", "__Host-oci_session=secret; theme=dark; oci_login=x; oci_session=y")
		if err := f.Serve(httptest.NewRecorder(), req, next); err != nil {
			t.Fatal(err)
		}
		if got != "theme=dark" {
			t.Errorf("%s: the backend got Cookie %q, want only theme=dark", target, got)
		}
		if req.Header.Get("Cookie") == "" {
			t.Errorf("%s: the client's own request lost its cookies", target)
		}
	}
}
