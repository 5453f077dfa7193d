package registry

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

func TestMatchPath(t *testing.T) {
	tests := []struct {
		path string
		kind RouteKind
		name string
		arg  string
		err  bool
	}{
		{path: "/v2", kind: RoutePing},
		{path: "/v2/", kind: RoutePing},
		{path: "/v2/_catalog", kind: RouteCatalog},
		{path: "/v2/a/tags/list", kind: RouteTags, name: "a"},
		{path: "/v2/a/b/c/tags/list", kind: RouteTags, name: "a/b/c"},
		{path: "/v2/a/manifests/latest", kind: RouteManifest, name: "a", arg: "latest"},
		{path: "/v2/a/blobs/sha256:x", kind: RouteBlob, name: "a", arg: "sha256:x"},
		{path: "/v2/a/blobs/uploads/", kind: RouteUploads, name: "a"},
		{path: "/v2/a/blobs/uploads", kind: RouteUploads, name: "a"},
		{path: "/v2/a/blobs/uploads/abc", kind: RouteUpload, name: "a", arg: "abc"},
		{path: "/v2/a/referrers/sha256:x", kind: RouteReferrers, name: "a", arg: "sha256:x"},
		// names may hold the action words as components
		{path: "/v2/blobs/blobs/sha256:x", kind: RouteBlob, name: "blobs", arg: "sha256:x"},
		{path: "/v2/x/blobs/blobs/uploads/", kind: RouteUploads, name: "x/blobs"},
		{path: "/v2/manifests/manifests/tag", kind: RouteManifest, name: "manifests", arg: "tag"},
		{path: "/v2/tags/tags/list", kind: RouteTags, name: "tags"},
		{path: "/v2/a/blobs/uploads/manifests/x", kind: RouteManifest, name: "a/blobs/uploads", arg: "x"},
		{path: "/v2/a", err: true},
		{path: "/v2/a/blobs/", err: true},
		{path: "/v2/a/manifests/", err: true},
		{path: "/v3/a/tags/list", err: true},
		{path: "/", err: true},
	}
	for _, tc := range tests {
		kind, name, arg, err := matchPath(tc.path)
		if tc.err {
			if err == nil {
				t.Errorf("%s: matched %v %q %q, want no match", tc.path, kind, name, arg)
			}
			continue
		}
		if err != nil || kind != tc.kind || name != tc.name || arg != tc.arg {
			t.Errorf("%s: got %v %q %q %v, want %v %q %q", tc.path, kind, name, arg, err, tc.kind, tc.name, tc.arg)
		}
	}
}

func TestPingNotFoundAndMethods(t *testing.T) {
	tr := newTestRegistry(t)
	for _, m := range []string{"GET", "HEAD"} {
		for _, p := range []string{"/v2/", "/v2"} {
			resp := tr.do(m, p, nil)
			tr.wantStatus(resp, http.StatusOK)
			if got := resp.Header.Get("Docker-Distribution-API-Version"); got != "registry/2.0" {
				t.Errorf("%s %s: API version header %q", m, p, got)
			}
		}
	}
	if o := tr.obs.last(); o.op != OpPing || o.status != 200 {
		t.Errorf("observer saw %+v", o)
	}

	tests := []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/v2/foo", 404, CodeNotFound},
		{"GET", "/v2/foo/bar/baz", 404, CodeNotFound},
		{"POST", "/v2/", 405, CodeUnsupported},
		{"DELETE", "/v2/_catalog", 405, CodeUnsupported},
		{"POST", "/v2/foo/manifests/latest", 405, CodeUnsupported},
		{"PUT", "/v2/foo/blobs/sha256:" + hex64('a'), 405, CodeUnsupported},
		{"GET", "/v2/foo/blobs/uploads/", 405, CodeUnsupported},
		{"POST", "/v2/foo/tags/list", 405, CodeUnsupported},
		{"GET", "/v2/Foo/tags/list", 400, CodeNameInvalid},
		{"GET", "/v2/foo//bar/tags/list", 400, CodeNameInvalid},
		{"GET", "/v2/foo-/tags/list", 400, CodeNameInvalid},
		{"GET", "/v2/" + longName(256) + "/tags/list", 400, CodeNameInvalid},
		{"GET", "/v2/_catalog/tags/list", 400, CodeNameInvalid},
	}
	for _, tc := range tests {
		resp := tr.do(tc.method, tc.path, nil)
		tr.wantError(resp, tc.status, tc.code)
		if tc.status == 405 && resp.Header.Get("Allow") == "" {
			t.Errorf("%s %s: 405 without Allow", tc.method, tc.path)
		}
	}
	// 255 characters is still a name
	resp := tr.do("GET", "/v2/"+longName(255)+"/tags/list", nil)
	tr.wantError(resp, 404, CodeNameUnknown)
}

func longName(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = 'a'
		if i%10 == 9 && i != n-1 {
			b[i] = '/'
		}
	}
	return string(b)
}

func hex64(c byte) string {
	b := make([]byte, 64)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

// TestUnreadableQueryRefused: a query Go reads only in part — more than
// 10,000 parameters (read as none), a `;`, a bad escape — is refused with
// 400 and changes nothing. A push with 10,001 tags was answered 201 with
// none of them made.
func TestUnreadableQueryRefused(t *testing.T) {
	tr := newTestRegistry(t)
	body := tr.image("q/app", "l")
	d := cache.FromBytes(cache.SHA256, body).String()
	tags := strings.Repeat("&tag=t", 10001)
	for _, c := range []struct{ method, path string }{
		{"PUT", "/v2/q/app/manifests/v1?" + tags[1:]},
		{"PUT", "/v2/q/app/manifests/" + d + "?tag=v1;tag=v2"},
		{"PUT", "/v2/q/app/manifests/" + d + "?tag=v1&tag=%zz"},
		{"GET", "/v2/q/app/tags/list?n=%zz"},
		{"POST", "/v2/q/app/blobs/uploads/?mount=" + d + ";from=q/other"},
	} {
		resp := tr.do(c.method, c.path, body, "Content-Type", mtManifest)
		tr.wantError(resp, http.StatusBadRequest, CodeUnsupported)
	}
	tr.wantStatus(tr.do("GET", "/v2/q/app/manifests/"+d, nil), http.StatusNotFound)
	if tl := tr.tags("q/app", ""); len(tl.Tags) != 0 {
		t.Errorf("tags %q made by refused pushes", tl.Tags)
	}
	// A readable query with the same tags works.
	tr.wantStatus(tr.do("PUT", "/v2/q/app/manifests/v1?tag=v2", body, "Content-Type", mtManifest), http.StatusCreated)
	if tl := tr.tags("q/app", ""); !slices.Equal(tl.Tags, []string{"v1", "v2"}) {
		t.Errorf("tags %q", tl.Tags)
	}
}

// TestBadDigestSaidAlike: a digest of an algorithm the registry does not
// support is said to be one, with 400 DIGEST_INVALID, wherever it comes:
// a blob's path, a manifest's, an upload's ?digest= (a manifest GET said
// only "invalid digest").
func TestBadDigestSaidAlike(t *testing.T) {
	tr := newTestRegistry(t)
	tr.image("d/app", "l")
	unsupported := "sha384:" + strings.Repeat("a", 96)
	post := tr.do("POST", "/v2/d/app/blobs/uploads/", nil)
	tr.wantStatus(post, http.StatusAccepted)
	loc := post.Header.Get("Location")
	join := "?"
	if strings.Contains(loc, "?") {
		join = "&"
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v2/d/app/blobs/" + unsupported},
		{"GET", "/v2/d/app/manifests/" + unsupported},
		{"PUT", loc + join + "digest=" + unsupported},
	} {
		resp := tr.do(c.method, c.path, nil)
		tr.wantError(resp, http.StatusBadRequest, CodeDigestInvalid)
		if !strings.Contains(string(resp.body), "unsupported digest algorithm") {
			t.Errorf("%s %s: %s, want it to say the algorithm is unsupported", c.method, c.path, resp.body)
		}
	}
}
