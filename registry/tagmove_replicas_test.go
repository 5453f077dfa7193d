package registry

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/authscope"
	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestCreateOnlyPushAcrossReplicas: ci, who may create tags in
// blumeops/** but not update, pushes through replica A; a maintainer
// releases through replica B, on the same PostgreSQL and blob folder,
// at the worst moment: after A has judged ci's push a create and read
// its body, right as A writes it (a hook on A's store runs B's push
// first). ci's push must be refused as the update it has become, and
// the release stay as the maintainer pushed it.
//
// Before the check moved into the store's transaction, A checked the
// tags and then wrote, under a lock of its own process that B, another
// process, does not take: with that lock split per handler (as it is
// between replicas), this test saw A's push answered 201 and v1 moved
// to ci's manifest.
func TestCreateOnlyPushAcrossReplicas(t *testing.T) {
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := cache.FromBytes(cache.SHA256, cfg)
	// A manifest over the config without a mediaType of its own: the
	// push's Content-Type says what it is.
	manifest := func(who string) []byte {
		return []byte(fmt.Sprintf(`{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[],"annotations":{"by":%q}}`,
			cd, len(cfg), who))
	}
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	ci, root := basic("ci", "ci-pw"), basic("root", "root-pw")
	release, evil := manifest("root"), manifest("ci")

	for _, c := range []struct {
		name string
		// ci's push through A, and the maintainer's through B.
		ciPath, ciType, rootPath, rootType string
		ciBody                             []byte
		// check what a pull through B then sees of the release.
		check func(t *testing.T, b *replica)
	}{
		{
			name:   "tag released meanwhile",
			ciPath: "/v2/blumeops/app/manifests/v1", ciType: MediaTypeOCIManifest, ciBody: evil,
			rootPath: "/v2/blumeops/app/manifests/v1", rootType: MediaTypeOCIManifest,
			check: func(t *testing.T, b *replica) {
				resp := b.do(t, "HEAD", "/v2/blumeops/app/manifests/v1", nil, root, "")
				if want := cache.FromBytes(cache.SHA256, release).String(); resp.Header.Get("Docker-Content-Digest") != want {
					t.Errorf("v1 is %s, want the maintainer's %s", resp.Header.Get("Docker-Content-Digest"), want)
				}
			},
		},
		{
			name:   "tag parameter released meanwhile",
			ciPath: "/v2/blumeops/app/manifests/" + cache.FromBytes(cache.SHA256, evil).String() + "?tag=v2", ciType: MediaTypeOCIManifest, ciBody: evil,
			rootPath: "/v2/blumeops/app/manifests/v2", rootType: MediaTypeOCIManifest,
			check: func(t *testing.T, b *replica) {
				resp := b.do(t, "HEAD", "/v2/blumeops/app/manifests/v2", nil, root, "")
				if want := cache.FromBytes(cache.SHA256, release).String(); resp.Header.Get("Docker-Content-Digest") != want {
					t.Errorf("v2 is %s, want the maintainer's %s", resp.Header.Get("Docker-Content-Digest"), want)
				}
			},
		},
		{
			// The same bytes: ci's push as an index would change how every
			// pull of the released manifest is answered.
			name:   "manifest released meanwhile under another type",
			ciPath: "/v2/blumeops/app/manifests/" + cache.FromBytes(cache.SHA256, release).String(), ciType: MediaTypeOCIIndex, ciBody: release,
			rootPath: "/v2/blumeops/app/manifests/v3", rootType: MediaTypeOCIManifest,
			check: func(t *testing.T, b *replica) {
				resp := b.do(t, "HEAD", "/v2/blumeops/app/manifests/v3", nil, root, "")
				if got := resp.Header.Get("Content-Type"); got != MediaTypeOCIManifest {
					t.Errorf("the release is served as %q, want %q", got, MediaTypeOCIManifest)
				}
			},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			dsn, blobs := pgtest.NewDatabase(t), t.TempDir()
			a, b := newReplica(t, dsn, blobs), newReplica(t, dsn, blobs)
			b.wantStatus(t, b.do(t, "POST", "/v2/blumeops/app/blobs/uploads/?digest="+cd.String(), cfg, root, ""), http.StatusCreated)

			// Right before A writes ci's manifest, the maintainer's
			// release lands through B. It runs on A's handler goroutine:
			// failures are reported, never Fatal.
			a.hold.setBefore(func() {
				resp, err := b.send("PUT", c.rootPath, release, root, c.rootType)
				if err != nil || resp.StatusCode != http.StatusCreated {
					t.Errorf("the maintainer's release through B: %v %v (does it wait for A?)", resp, err)
				}
			})
			resp := a.do(t, "PUT", c.ciPath, c.ciBody, ci, c.ciType)
			if !a.hold.ran() {
				t.Fatal("A never wrote: the hook did not run")
			}
			if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(resp.body), "DENIED") {
				t.Errorf("ci's push through A: %d %s, want 403 DENIED", resp.StatusCode, resp.body)
			}
			c.check(t, b)
		})
	}
}

// replica is one registry handler on its own stores (its own PostgreSQL
// pool, its own blob store client) over a database and a blob folder
// that other replicas share, with an authorizer of its own.
type replica struct {
	srv  *httptest.Server
	hold *holdWrite
}

func newReplica(t *testing.T, dsn, blobDir string) *replica {
	t.Helper()
	meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(meta.Close)
	blobs, err := fs.New(fs.Options{Dir: blobDir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases(), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{
			"blumeops/**": {Policies: []authscope.Grant{{Users: []string{"ci"}, Actions: []string{"read", "create"}}}},
		},
		Admin: &authscope.AdminPolicy{Users: []string{"root"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	az, err := authscope.NewAuthorizer(authscope.Options{Htpasswd: testHtpasswd(t, "ci", "ci-pw", "root", "root-pw"), Policy: pol})
	if err != nil {
		t.Fatal(err)
	}
	hold := &holdWrite{Store: st}
	h := New(Config{Store: hold, Logger: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)), Authorizer: az, CanRead: az.CanRead})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		st.Close()
	})
	return &replica{srv: srv, hold: hold}
}

// send sends one request with a deadline; auth and ctype may be empty.
func (r *replica) send(method, path string, body []byte, auth, ctype string) (*response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, r.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := r.srv.Client().Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return &response{Response: resp, body: b}, err
}

func (r *replica) do(t *testing.T, method, path string, body []byte, auth, ctype string) *response {
	t.Helper()
	resp, err := r.send(method, path, body, auth, ctype)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp
}

func (r *replica) wantStatus(t *testing.T, resp *response, status int) {
	t.Helper()
	if resp.StatusCode != status {
		t.Fatalf("%s %s: %d %s, want %d", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, resp.body, status)
	}
}

// holdWrite is a replica's store that runs a function once, right
// before its first manifest write (either kind), then writes: it stands
// for the time between a replica's decision and its write, in which
// another replica's write can land.
type holdWrite struct {
	Store
	mu     sync.Mutex
	before func()
	wrote  bool
}

// setBefore sets the function the first write runs.
func (h *holdWrite) setBefore(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.before = f
}

// hook runs the function on the first write; later writes, and writes
// of other requests meanwhile, wait for it.
func (h *holdWrite) hook() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.wrote && h.before != nil {
		h.before()
	}
	h.wrote = true
}

// ran reports whether a write came.
func (h *holdWrite) ran() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.wrote
}

func (h *holdWrite) PutManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	h.hook()
	return h.Store.PutManifest(ctx, repo, m, body, tags)
}

func (h *holdWrite) CreateManifest(ctx context.Context, repo string, m cache.Manifest, body []byte, tags []string) error {
	h.hook()
	return h.Store.CreateManifest(ctx, repo, m, body, tags)
}
