package front

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/registry"
)

// FuzzFrontPath: for any request target, the front either answers itself
// with an error envelope, passes a path outside the API as it came, or
// passes an API path in a canonical spelling — /v2/ and a valid name, a
// route and its last element, no empty, dot or dot-dot segment, nothing
// encoded — that reads the same to every server.
func FuzzFrontPath(f *testing.F) {
	const d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for _, seed := range []string{
		"/v2/", "/v2", "/v2/_catalog?n=1", "/docker.io/v2/", "/v2/docker.io/", "/v2/docker.io//",
		"/v2/debian/manifests/latest", "/v2/library/debian/blobs/" + d, "/docker.io/v2/debian/tags/list?n=1&last=a",
		"/v2/debian/manifests/x?ns=registry-1.docker.io", "/v2/app/blobs/uploads/?mount=" + d + "&from=library/debian",
		"/v2/app/blobs/uploads/0b1c-uuid", "/v2/app/referrers/" + d, "/v2/_zot/ext/search",
		"/v2/debian/manifests/bookworm/", "/v2/..", "/v2/debian/manifests/%2e%2e", "/v2/debian/manifests/x%2F..%2F..%2Fy",
		"//v2/debian/manifests/x", "/./v2/", "/x/../v2/debian/manifests/x", "/V2/debian/manifests/x", "/v2%5Cdebian/manifests/x",
		"/v2;p/debian/manifests/x", "/v2%00/", "/%2576%2532/", "/docker.io//v2/x/manifests/y", "/Docker.io/v2/x/manifests/y",
		"/v2/_zot/ext/../../v2/debian/manifests/x", "/index.html", "/_oci/token?scope=repository:debian:pull",
		"/_oci/token/", "/_OCI/token", "/_oci//token", "/x/../_oci/token", "/_oci/auth/",
		"/v2/a%2Fb/manifests/x", "/v2/team/app/manifests/v1?ns=example.com", "/v2/x/manifests/y;z", "/v2/x/blobs/uploads/..%2F..",
		"/v2/debian/manifests/x?ns=quay.io", "/v2/debian/manifests/x?ns=docker.io;ns=quay.io",
	} {
		f.Add(seed, "front.example")
	}
	f.Add("/v2/debian/manifests/x", mirrorHost)
	fr, err := New(Config{
		Namespaces:    []authscope.Namespace{{Prefix: "docker.io", Hosts: []string{mirrorHost}, Default: true}, {Prefix: "ghcr.io"}},
		LocalPrefixes: []string{"team"},
		TokenRealm:    "https://auth.internal.example/token", Service: "registry.example", ProxyToken: true,
	})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, target, host string) {
		u, err := url.ParseRequestURI(target)
		if err != nil || u.Host != "" || u.Scheme != "" || !strings.HasPrefix(target, "/") {
			return // the server refuses it before any handler
		}
		r := (&http.Request{Method: http.MethodGet, URL: u, RequestURI: target, Host: host,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}}).WithContext(context.Background())
		var got *http.Request
		w := httptest.NewRecorder()
		err = fr.Serve(w, r, func(w http.ResponseWriter, br *http.Request) error {
			got = br
			w.WriteHeader(http.StatusNoContent)
			return nil
		})
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
		if u.Path == authscope.TokenPath {
			return
		}
		if got == nil {
			var env struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if w.Code < 400 || w.Code >= 500 || json.Unmarshal(w.Body.Bytes(), &env) != nil || len(env.Errors) == 0 {
				t.Fatalf("%q refused with %d %q, want a client error in the envelope", target, w.Code, w.Body)
			}
			return
		}
		if under(u.Path, "/_oci") {
			t.Fatalf("%q, under the token proxy's /_oci, passed as %q", target, got.URL)
		}
		bp := got.URL.Path
		apiLike := underV2(u.Path)
		if !apiLike && !registry.IsRegistryPath(bp) {
			if bp != u.Path || got.URL.RawPath != u.RawPath {
				t.Fatalf("%q outside the API passed as %q", target, got.URL)
			}
			return
		}
		if err := canonical(got); err != nil {
			t.Fatalf("%q passed as %q: %v", target, got.URL, err)
		}
	})
}

// underV2 reports whether p, decoded and cleaned as lenient servers do,
// is /v2 or below: written apart from registry.MayReachAPI, to check it.
func underV2(p string) bool { return under(p, "/v2") }

// under reports whether p, decoded and cleaned as lenient servers do, is
// root or below.
func under(p, root string) bool {
	for i := 0; i < 4; i++ {
		c := path.Clean("/" + strings.ReplaceAll(strings.ToLower(p), `\`, "/"))
		if c == root || strings.HasPrefix(c, root+"/") {
			return true
		}
		d, err := url.PathUnescape(p)
		if err != nil || d == p {
			break
		}
		p = d
	}
	return false
}

// canonical checks a request the front passed to the backend under the
// API.
func canonical(r *http.Request) error {
	p := r.URL.Path
	if r.URL.RawPath != "" {
		return fmt.Errorf("raw path %q", r.URL.RawPath)
	}
	if r.RequestURI != r.URL.RequestURI() {
		return fmt.Errorf("RequestURI %q for %q", r.RequestURI, r.URL.RequestURI())
	}
	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		return fmt.Errorf("not under /v2/")
	}
	for i, seg := range strings.Split(rest, "/") {
		last := i == strings.Count(rest, "/")
		if seg == "." || seg == ".." || seg == "" && !last || strings.ContainsAny(seg, "\\;%") {
			return fmt.Errorf("segment %d %q", i, seg)
		}
		for _, c := range seg {
			if c < 0x20 || c == 0x7f {
				return fmt.Errorf("control character in %q", seg)
			}
		}
	}
	if isExtension(r) {
		return nil
	}
	t, err := registry.ParseTarget(nil, r)
	if err != nil {
		return err
	}
	if t.Kind != registry.RoutePing && t.Kind != registry.RouteCatalog && !authscope.ValidName(t.Name) {
		return fmt.Errorf("name %q", t.Name)
	}
	if !validArg(t.Kind, t.Arg) {
		return fmt.Errorf("last element %q", t.Arg)
	}
	return nil
}
