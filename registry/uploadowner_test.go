package registry

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// TestUploadSessionOwner: a session a signed-in user opened is that
// user's alone. Another user who may push the repository and learned its
// URL (a log, a shared proxy) gets, for every method, the very answer an
// unknown id gets; the owner finishes it. A session opened anonymously
// stays open to anyone who may push. On one node, and across replicas
// sharing one metadata store (the session opened on one, touched on the
// other).
func TestUploadSessionOwner(t *testing.T) {
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{Repositories: map[string]authscope.RepositoryPolicy{
		"team/**": {Default: []string{"read", "create"}},
		"pub/**":  {Anonymous: []string{"read", "create"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: testHtpasswd(t, "alice", "a-pw", "bob", "b-pw"), Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	single := func(t *testing.T) (string, string) {
		store, err := cache.Open(cache.Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = store.Close() })
		srv := httptest.NewServer(New(Config{Store: store, Logger: zaptest.NewLogger(t), Authorizer: az}))
		t.Cleanup(srv.Close)
		return srv.URL, srv.URL
	}
	replicas := func(t *testing.T) (string, string) {
		meta, err := badgermeta.Open(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = meta.Close() })
		leases, blobDir := coord.NewLocal(), t.TempDir()
		var urls []string
		for range 2 {
			blobs, err := fs.New(fs.Options{Dir: blobDir})
			if err != nil {
				t.Fatal(err)
			}
			st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: leases})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(st.Close)
			srv := httptest.NewServer(New(Config{Store: st, Logger: zaptest.NewLogger(t), Authorizer: az}))
			t.Cleanup(srv.Close)
			urls = append(urls, srv.URL)
		}
		return urls[0], urls[1]
	}
	for name, setup := range map[string]func(*testing.T) (string, string){"single": single, "replicas": replicas} {
		t.Run(name, func(t *testing.T) {
			a, b := setup(t)
			do := func(base, method, path, user string, body []byte) (int, string, http.Header) {
				t.Helper()
				req, _ := http.NewRequest(method, base+path, bytes.NewReader(body))
				if user != "" {
					req.SetBasicAuth(user, user[:1]+"-pw")
				}
				if body != nil {
					req.Header.Set("Content-Type", "application/octet-stream")
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				out, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, string(out), resp.Header
			}
			open := func(repo, user string) string {
				t.Helper()
				st, body, h := do(a, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", user, nil)
				if st != http.StatusAccepted {
					t.Fatalf("%s opens a session on %s: %d %s", user, repo, st, body)
				}
				return h.Get("Location")
			}
			data := []byte("alice's layer")
			d := cache.FromBytes(cache.SHA256, data)

			gone := open("team/app", "alice")
			if st, body, _ := do(a, http.MethodDelete, gone, "alice", nil); st != http.StatusNoContent {
				t.Fatalf("alice cancels her session: %d %s", st, body)
			}
			loc := open("team/app", "alice")
			for _, m := range []struct{ method, query string }{
				{http.MethodGet, ""}, {http.MethodPatch, ""}, {http.MethodPut, "?digest=" + d.String()}, {http.MethodDelete, ""},
			} {
				var body []byte
				if m.method == http.MethodPatch || m.method == http.MethodPut {
					body = []byte("bob's bytes")
				}
				wantSt, wantBody, _ := do(b, m.method, gone+m.query, "bob", body)
				st, got, _ := do(b, m.method, loc+m.query, "bob", body)
				if wantSt != http.StatusNotFound || st != wantSt || got != wantBody {
					t.Errorf("bob %s alice's session: %d %s; an unknown one: %d %s; want both 404 BLOB_UPLOAD_UNKNOWN, alike", m.method, st, got, wantSt, wantBody)
				}
			}
			if st, body, _ := do(b, http.MethodPatch, loc, "alice", data); st != http.StatusAccepted {
				t.Fatalf("alice's chunk: %d %s", st, body)
			}
			if st, body, _ := do(b, http.MethodPut, loc+"?digest="+d.String(), "alice", nil); st != http.StatusCreated {
				t.Fatalf("alice finishes: %d %s", st, body)
			}

			// An anonymous session: anyone who may push may go on with it.
			anon := open("pub/app", "")
			if st, body, _ := do(b, http.MethodPatch, anon, "bob", data); st != http.StatusAccepted {
				t.Fatalf("bob goes on with an anonymous session: %d %s", st, body)
			}
			if st, body, _ := do(b, http.MethodPut, anon+"?digest="+d.String(), "", nil); st != http.StatusCreated {
				t.Fatalf("anonymous finish: %d %s", st, body)
			}
		})
	}
}
