package registry

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
)

// newDenialRegistry is a registry with a docker.io mirror (reached with
// ?ns=docker.io; its upstream is never asked, every request to it is
// refused first) and a policy: ci reads and creates in blumeops/**, reads
// public/**, nothing else; root is admin.
func newDenialRegistry(t *testing.T) *httptest.Server {
	t.Helper()
	hp := testHtpasswd(t, "ci", "ci-pw", "root", "root-pw")
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"blumeops/**": {Policies: []authscope.Grant{{Users: []string{"ci"}, Actions: []string{"read", "create"}}}},
			"public/**":   {Policies: []authscope.Grant{{Users: []string{"ci"}, Actions: []string{"read"}}}},
			"secret/**":   {},
		},
		Admin: &authscope.AdminPolicy{Users: []string{"root"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{"http://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	names, err := authscope.NewNames([]authscope.Namespace{m.Namespace()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: hp, Policy: pol, Names: names})
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.Open(cache.Options{Dir: t.TempDir(), Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))})
	if err != nil {
		t.Fatal(err)
	}
	h, err := NewHandler(Config{Store: store, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Authorizer: a, CanRead: a.CanRead, Mirrors: []*Mirror{m}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = store.Close()
	})
	return srv
}

// errorEnvelope sends one request and returns its status and the first
// error of its envelope.
func errorEnvelope(t *testing.T, req *http.Request) (int, string, string, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var env struct {
		Errors []struct{ Code, Message string }
	}
	if err := json.Unmarshal(body, &env); err != nil || len(env.Errors) == 0 {
		return resp.StatusCode, "", "", string(body)
	}
	return resp.StatusCode, env.Errors[0].Code, env.Errors[0].Message, string(body)
}

// TestAuthDeniedNamesOwnRequest: a DENIED answer says which action on
// which name was refused, in the name the client typed — never the
// internal name it did not type, never another repository.
func TestAuthDeniedNamesOwnRequest(t *testing.T) {
	srv := newDenialRegistry(t)
	host := strings.TrimPrefix(srv.URL, "http://")
	ci := remote.WithAuth(&authn.Basic{Username: "ci", Password: "ci-pw"})
	root := remote.WithAuth(&authn.Basic{Username: "root", Password: "root-pw"})
	v1, _ := random.Image(256, 1)
	v2, _ := random.Image(256, 1)
	refOf := func(s string) string { return host + "/" + s }
	for _, w := range []struct {
		ref string
		opt remote.Option
	}{{"blumeops/app:v1", ci}, {"secret/x:v1", root}} {
		if err := remote.Write(mustRef(t, refOf(w.ref)), v1, w.opt); err != nil {
			t.Fatalf("push %s: %v", w.ref, err)
		}
	}
	digest, _ := v1.Digest()
	layers, _ := v1.Layers()
	layer, _ := layers[0].Digest()

	req := func(method, path string) *http.Request {
		r, _ := http.NewRequest(method, srv.URL+path, nil)
		r.SetBasicAuth("ci", "ci-pw")
		return r
	}
	for _, tc := range []struct {
		name      string
		req       *http.Request
		want      string
		forbidden []string // never in the body
	}{
		{"a tag move", nil, "update on blumeops/app not granted", nil},
		{"a delete", req(http.MethodDelete, "/v2/blumeops/app/manifests/"+digest.String()), "delete on blumeops/app not granted", nil},
		{"a read elsewhere", req(http.MethodGet, "/v2/secret/x/tags/list"), "read on secret/x not granted", []string{"blumeops"}},
		{"a push where ci may not read", req(http.MethodPost, "/v2/secret/y/blobs/uploads/"), "read on secret/y not granted", []string{"blumeops", "secret/x"}},
		{"a push where ci may only read", req(http.MethodPost, "/v2/public/app/blobs/uploads/"), "create on public/app not granted", []string{"blumeops", "secret"}},
		{"a mirrored name through ns", req(http.MethodGet, "/v2/library/debian/manifests/latest?ns=docker.io"), "read on library/debian not granted", []string{"docker.io/"}},
		{"a mount source", req(http.MethodPost, "/v2/blumeops/app/blobs/uploads/?mount="+layer.String()+"&from=secret/x"), "read on secret/x not granted", nil},
	} {
		if tc.req == nil {
			err := remote.Write(mustRef(t, refOf("blumeops/app:v1")), v2, ci)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
			}
			continue
		}
		status, code, msg, body := errorEnvelope(t, tc.req)
		if status != http.StatusForbidden || code != CodeDenied || msg != tc.want {
			t.Errorf("%s: %d %s %q, want 403 DENIED %q", tc.name, status, code, msg, tc.want)
		}
		for _, f := range tc.forbidden {
			if strings.Contains(body, f) {
				t.Errorf("%s: the answer names %q: %s", tc.name, f, body)
			}
		}
	}
}

// TestAuthRepeatedAuthorization: two Authorization headers are refused
// with 400 before any of them is read, on every endpoint.
func TestAuthRepeatedAuthorization(t *testing.T) {
	srv := newDenialRegistry(t)
	for _, path := range []string{"/v2/", "/v2/blumeops/app/tags/list", "/v2/_catalog", "/v2/library/debian/manifests/latest?ns=docker.io"} {
		r, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
		r.Header["Authorization"] = []string{"Basic " + basicOf("root", "root-pw"), "Basic " + basicOf("ci", "ci-pw")}
		if status, code, _, body := errorEnvelope(t, r); status != http.StatusBadRequest || code != CodeUnauthorized {
			t.Errorf("%s: %d %s", path, status, body)
		}
	}
}

func mustRef(t *testing.T, s string) name.Reference {
	t.Helper()
	ref, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

func basicOf(user, pass string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
}
