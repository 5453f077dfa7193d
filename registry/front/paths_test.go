package front

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"

	"github.com/caddy-oci/caddy-oci/internal/rawhttp"
)

// An API path the front cannot parse is answered by the front in the
// spec's envelope and never reaches the backend, which would answer it
// with its own realm and names; every spelling a lenient server might
// read as an API path counts.
func TestUnparsableAPIPathsStayAtTheFront(t *testing.T) {
	rg := newRig(t, nil)
	backendHost := strings.TrimPrefix(rg.backend.URL, "http://")
	realmHost := strings.TrimPrefix(strings.TrimSuffix(rg.realm, "/auth"), "http://")
	for _, p := range []string{
		"/v2/debian/manifests/bookworm/",
		"/v2/debian/tags/list/",
		"/v2/debian/blobs/uploads/u1/",
		"/v2/debian/blobs/uploads/u1/..",
		"/v2/..",
		"/v2/debian/..",
		"/v2/debian/manifests/..",
		"/v2/debian/manifests/.",
		"/v2/debian/manifests/%2e%2e",
		"/v2/debian/manifests/x%2F..%2F..%2Fy",
		"/v2/debian/blobs/uploads/%2e%2e",
		"/v2/debian/manifests/bookworm%00",
		"/v2/debian/manifests/bookworm%0d%0aX-Evil:%201",
		"/v2/debian/manifests/" + strings.Repeat("a", 300),
		"/v2/debian/blobs/not-a-digest",
		"/v2/debian/blobs/sha256:abc%2F..",
		"/v2/debian/referrers/latest",
		"/v2/debian/nothing/here",
		"/v2/_catalog/",
		"/v2/docker.io//",
		"/v2/_zot/ext/../../v2/debian/manifests/bookworm",
		"/v2/_zot/ext/search/../../../debian/manifests/bookworm",
		"//v2/debian/manifests/bookworm",
		"///v2/",
		"/./v2/debian/manifests/bookworm",
		"/x/../v2/debian/manifests/bookworm",
		"/V2/debian/manifests/bookworm",
		"/v2%5Cdebian/manifests/bookworm",
		"/%5Cv2/debian/manifests/bookworm",
		"/v2;x=y/debian/manifests/bookworm",
		"/v2%00/",
		"/v2%252Fdebian%252Fmanifests%252Fbookworm",
		"/%2576%2532/",
		"/docker.io//v2/debian/manifests/bookworm",
		"/docker.io/v2/debian/manifests/bookworm/",
		"/Docker.io/v2/debian/manifests/bookworm",
		"/docker.io/./v2/",
		// Names the front maps are checked as names: 400 NAME_INVALID.
		"/v2//debian/manifests/bookworm",
		"/v2/Debian/manifests/bookworm",
		"/v2/a/../debian/manifests/bookworm",
		"/v2/" + strings.Repeat("a/", 130) + "b/manifests/x",
		"/v2/debian/manifests/bookworm?ns=quay.io",
		"/v2/debian/manifests/bookworm?ns=docker.io%00",
	} {
		t.Run(p[:min(len(p), 80)], func(t *testing.T) {
			resp, body := rawhttp.Get(t, rg.frontHost(), p)
			var env struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if resp.StatusCode != http.StatusNotFound && resp.StatusCode != http.StatusBadRequest {
				t.Errorf("status %d, want the front's 404 or 400 (%s)", resp.StatusCode, body)
			}
			if err := json.Unmarshal(body, &env); err != nil || len(env.Errors) == 0 || env.Errors[0].Code == "UNAUTHORIZED" {
				t.Errorf("body %q is not the front's error envelope", body)
			}
			if c := resp.Header.Values("Www-Authenticate"); len(c) > 0 {
				t.Errorf("challenge %q: the backend answered", c)
			}
			for _, leak := range []string{"docker.io/library", backendHost, realmHost, rg.realm} {
				for k, vs := range resp.Header {
					if strings.Contains(strings.Join(vs, " "), leak) {
						t.Errorf("header %s %q names %q", k, vs, leak)
					}
				}
				if strings.Contains(string(body), leak) {
					t.Errorf("body names %q: %s", leak, body)
				}
			}
		})
	}
}

// Paths the front passes on unmapped (outside the API, a backend's
// extension) still come back with the backend's challenges pointing at
// the front's token proxy, not at the backend's realm.
func TestPassedPathsHideTheBackendRealm(t *testing.T) {
	rg := newRig(t, nil)
	for _, p := range []string{"/v2/_zot/ext/search", "/index.html", "/api/v2.0/projects", "/quay.io/v2/x/manifests/y"} {
		resp, body := rg.do(t, http.MethodGet, p)
		c := challengeOf(t, resp)
		if c["realm"] != "http://"+rg.frontHost()+"/_oci/token" || c["scope"] != "" {
			t.Errorf("%s: challenge %q; want the front's token proxy, no backend scope", p, resp.Header.Get("Www-Authenticate"))
		}
		if strings.Contains(string(body), "localhost") {
			t.Errorf("%s: body %s", p, body)
		}
	}
}

// A backend's URLs that the front cannot map (another repository, a path
// that does not parse) are dropped from Location, Content-Location and
// Link on every answer, errors and bodies the front cannot rewrite
// included; its host never reaches the client.
func TestBackendURLsOnErrorPaths(t *testing.T) {
	const internal = "backend.internal.example"
	var mu sync.Mutex
	var seen []string
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RequestURI())
		mu.Unlock()
		h := w.Header()
		h.Set("Location", "http://"+internal+"/v2/docker.io/library/secret/blobs/uploads/u1")
		h.Set("Content-Location", "http://"+internal+"/v2/docker.io/library/debian")
		h.Add("Link", "<http://"+internal+"/v2/docker.io/library/secret/tags/list?n=1>; rel=\"next\"")
		h.Add("Link", "<http://"+internal+"/v2/docker.io/library/debian/tags/list?n=1&last=a>; rel=\"next\"")
		h.Set("Www-Authenticate", `Bearer realm="http://`+internal+`/token",service="registry.test",scope="repository:docker.io/library/secret:pull repository:docker.io/library/debian:pull"`)
		switch r.URL.Query().Get("answer") {
		case "garbage":
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, "not json from "+internal)
		case "tags":
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = io.WriteString(w, "{broken")
		default:
			h.Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"no"}]}`)
		}
	})
	f, err := New(Config{
		Namespaces: []authscope.Namespace{{Prefix: "docker.io", Default: true}},
		TokenRealm: "http://" + internal + "/token", Service: "registry.test", ProxyToken: true,
		Logger: zaptest.NewLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(srv.Close)
	for _, p := range []string{
		"/v2/debian/tags/list",
		"/v2/debian/tags/list?answer=garbage",
		"/v2/debian/tags/list?answer=tags",
		"/v2/debian/blobs/uploads/",
		"/v2/",
		"/index.html",
	} {
		resp, err := http.Get(srv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for k, vs := range resp.Header {
			v := strings.Join(vs, " ")
			if strings.Contains(v, internal) || strings.Contains(v, "secret") {
				t.Errorf("%s: %d header %s %q names the backend's host or another repository", p, resp.StatusCode, k, vs)
			}
		}
		if strings.Contains(string(body), internal) {
			t.Errorf("%s: body names the backend's host: %s", p, body)
		}
		if strings.HasPrefix(p, "/v2/debian/tags/list") && !strings.Contains(p, "answer=") {
			if l := resp.Header.Get("Link"); l != `</v2/debian/tags/list?n=1&last=a>; rel="next"` {
				t.Errorf("%s: Link %q, want the debian page at the client's path", p, l)
			}
		}
	}
	if len(seen) != 6 {
		t.Errorf("backend saw %q", seen)
	}
}

// A query key that the front reads, spelled in another case (`NS`,
// `From`), would reach the backend untranslated, where a backend that
// reads keys without regard to case would apply a namespace twice or
// mount from a name the client never had mapped. The front refuses it
// with 400 in the envelope; nothing reaches the backend. So does a query
// Go reads only in part (a `;`, a bad escape, more than 10,000
// parameters): passed on as read, the backend would act on less than the
// client sent.
func TestQueryKeysInAnotherCaseStayAtTheFront(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	backend := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.URL.RequestURI())
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})
	cfg := frontConfig("")
	cfg.ProxyToken = false
	cfg.Logger = zaptest.NewLogger(t)
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.Middleware(backend))
	t.Cleanup(srv.Close)
	d := "sha256:" + strings.Repeat("a", 64)
	for _, p := range []string{
		"/v2/debian/tags/list?NS=ghcr.io",
		"/v2/debian/tags/list?n=1&Ns=docker.io",
		"/v2/team/app/blobs/uploads/?mount=" + d + "&From=debian",
		"/v2/team/app/blobs/uploads/?mount=" + d + "&from=debian&FROM=secret/app",
		"/v2/debian/tags/list?n=1;ns=quay.io",
		"/v2/team/app/blobs/uploads/?mount=" + d + "&from=%zz",
		"/v2/team/app/blobs/uploads/?mount=" + d + "&from=debian" + strings.Repeat("&x=1", 10000),
	} {
		t.Run(p[:min(len(p), 80)], func(t *testing.T) {
			resp, err := http.Post(srv.URL+p, "application/octet-stream", nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var env struct {
				Errors []struct{ Code string } `json:"errors"`
			}
			if resp.StatusCode != http.StatusBadRequest || json.Unmarshal(body, &env) != nil || len(env.Errors) == 0 {
				t.Errorf("%d %s, want 400 in the envelope", resp.StatusCode, body)
			}
		})
	}
	mu.Lock()
	if len(seen) != 0 {
		t.Errorf("the backend received %q", seen)
	}
	seen = nil
	mu.Unlock()
	// The keys as clients send them still work.
	resp, err := http.Post(srv.URL+"/v2/team/app/blobs/uploads/?mount="+d+"&from=debian", "application/octet-stream", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if resp.StatusCode != http.StatusAccepted || len(seen) != 1 || !strings.Contains(seen[0], "from=docker.io%2Flibrary%2Fdebian") {
		t.Errorf("a plain mount: %d, backend saw %q", resp.StatusCode, seen)
	}
}
