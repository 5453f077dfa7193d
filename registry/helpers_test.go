package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
)

// testRegistry is a Handler on a real store in a temp dir behind a real
// HTTP server.
type testRegistry struct {
	t     testing.TB
	srv   *httptest.Server
	store *cache.Store
	dir   string // the store's folder
	obs   *recordingObserver
	h     *Handler
}

func newTestRegistry(t testing.TB, mod ...func(*Config)) *testRegistry {
	t.Helper()
	dir := t.TempDir()
	store, err := cache.Open(cache.Options{Dir: dir, Logger: zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	obs := &recordingObserver{}
	cfg := Config{Store: store, Logger: zaptest.NewLogger(t), Observer: obs}
	for _, m := range mod {
		m(&cfg)
	}
	h := New(cfg)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background()) // what mirrors answered, stored before the store closes
		if err := store.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	return &testRegistry{t: t, srv: srv, store: store, dir: dir, obs: obs, h: h}
}

type response struct {
	*http.Response
	body []byte
}

// do sends one request; path is relative to the server, hdr pairs are
// header names and values.
func (tr *testRegistry) do(method, path string, body []byte, hdr ...string) response {
	tr.t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, tr.srv.URL+path, rd)
	if err != nil {
		tr.t.Fatalf("new request: %v", err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if http.CanonicalHeaderKey(hdr[i]) == "Host" {
			// Go's client sends req.Host, never a Host header.
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := tr.srv.Client().Do(req)
	if err != nil {
		tr.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tr.t.Fatalf("read body: %v", err)
	}
	return response{Response: resp, body: b}
}

type observation struct {
	op              string
	status          int
	bytesIn, bytesO int64
}

type recordingObserver struct {
	mu        sync.Mutex
	requests  []observation
	committed []int64
}

func (o *recordingObserver) ObserveRequest(op string, status int, in, out int64, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.requests = append(o.requests, observation{op, status, in, out})
}

func (o *recordingObserver) UploadCommitted(size int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.committed = append(o.committed, size)
}

func (o *recordingObserver) last() observation {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.requests) == 0 {
		return observation{}
	}
	return o.requests[len(o.requests)-1]
}

// wantError checks status and the envelope's code.
func (tr *testRegistry) wantError(resp response, status int, code string) {
	tr.t.Helper()
	if resp.StatusCode != status {
		tr.t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, resp.body)
	}
	if resp.Request.Method == http.MethodHead {
		return
	}
	var env struct {
		Errors []struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"errors"`
	}
	if err := json.Unmarshal(resp.body, &env); err != nil || len(env.Errors) != 1 {
		tr.t.Fatalf("%s %s: body %q is not an error envelope (%v)", resp.Request.Method, resp.Request.URL.Path, resp.body, err)
	}
	if env.Errors[0].Code != code {
		tr.t.Fatalf("%s %s: code %s, want %s", resp.Request.Method, resp.Request.URL.Path, env.Errors[0].Code, code)
	}
	if got := resp.Header.Get("Docker-Distribution-API-Version"); got != "registry/2.0" {
		tr.t.Fatalf("missing API version header on error, got %q", got)
	}
}

// wantStatus fails unless resp has status.
func (tr *testRegistry) wantStatus(resp response, status int) {
	tr.t.Helper()
	if resp.StatusCode != status {
		tr.t.Fatalf("%s %s: status %d, want %d; body %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, status, resp.body)
	}
}

// pushBlob uploads data monolithically into repo and returns its digest.
func (tr *testRegistry) pushBlob(repo string, data []byte) cache.Digest {
	tr.t.Helper()
	d := cache.FromBytes(cache.SHA256, data)
	resp := tr.do("POST", "/v2/"+repo+"/blobs/uploads/?digest="+d.String(), data)
	tr.wantStatus(resp, http.StatusCreated)
	return d
}

// pushManifest PUTs body as a manifest of media type mt under ref.
func (tr *testRegistry) pushManifest(repo, ref, mt string, body []byte) response {
	tr.t.Helper()
	return tr.do("PUT", "/v2/"+repo+"/manifests/"+ref, body, "Content-Type", mt)
}

// image pushes a config and layers into repo and returns an OCI image
// manifest referencing them.
func (tr *testRegistry) image(repo string, layers ...string) []byte {
	tr.t.Helper()
	cfg := []byte(`{"architecture":"amd64","os":"linux"}`)
	cd := tr.pushBlob(repo, cfg)
	m := map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        map[string]any{"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.String(), "size": len(cfg)},
	}
	ls := []any{}
	for _, l := range layers {
		ld := tr.pushBlob(repo, []byte(l))
		ls = append(ls, map[string]any{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.String(), "size": len(l)})
	}
	m["layers"] = ls
	b, err := json.Marshal(m)
	if err != nil {
		tr.t.Fatal(err)
	}
	return b
}

// with returns tr reporting to t (a subtest).
func (tr *testRegistry) with(t *testing.T) *testRegistry {
	c := *tr
	c.t = t
	return &c
}
