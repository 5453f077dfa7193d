package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/jackc/pgx/v5"
	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// pgMirror is a mirror of a fake upstream on the scaled-out store (a
// blob folder and PostgreSQL), with the database's DSN.
type pgMirror struct {
	up    *fakeUpstream
	store *composite.Store
	h     *Handler
	srv   *httptest.Server
	dsn   string
}

func newPGMirror(t *testing.T) *pgMirror {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	// These tests hold store writes on a table lock for as long as they
	// need. pgmeta's default 5s bound on a call could end a held write
	// before a loaded machine has set up the rest of the test; a minute
	// leaves pendingStoreTimeout (30s) as the bound of a write after its
	// answer, as in production.
	meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: dsn, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(meta.Close)
	blobs, err := fs.New(fs.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases(), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	up := newFakeUpstream(t)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Store: st, Logger: zaptest.NewLogger(t), Mirrors: []*Mirror{m}})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		st.Close()
	})
	return &pgMirror{up: up, store: st, h: h, srv: srv, dsn: dsn}
}

// lockManifests takes, in a session of its own, a lock on the manifests
// table that lets every read through and holds every write: the mirror's
// store write waits on it for as long as the test wants, without
// anything in the store being replaced. unlock ends it.
func lockManifests(t *testing.T, dsn string) (unlock func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE manifests IN SHARE MODE"); err != nil {
		t.Fatal(err)
	}
	done := false
	unlock = func() {
		if !done {
			done = true
			_ = tx.Rollback(ctx)
			_ = conn.Close(ctx)
		}
	}
	t.Cleanup(unlock)
	return unlock
}

// get sends one request with a deadline: an answer that waits for the
// locked store write never comes.
func (p *pgMirror) get(t *testing.T, method, path string) *http.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v (did the answer wait for the store write?)", method, path, err)
	}
	resp.Body.Close()
	return resp
}

// TestMirrorAnswersBeforeStoring: a cold manifest is answered as soon as
// it is verified, while its store write is held back; a HEAD and a GET
// by digest right after are answered alike from what the mirror holds,
// without asking upstream again; nothing is in the store until the write
// ends, and then all of it is. Run on PostgreSQL, whose lock holds the
// write deterministically.
func TestMirrorAnswersBeforeStoring(t *testing.T) {
	p := newPGMirror(t)
	img := randomImage(t, 1024, 1)
	p.up.pushImage("library/app", "v1", img)
	want, _ := img.Digest()
	d, _ := cache.ParseDigest(want.String())

	unlock := lockManifests(t, p.dsn)
	for _, c := range []struct{ method, path string }{
		{http.MethodGet, "/v2/library/app/manifests/v1"},
		{http.MethodHead, "/v2/library/app/manifests/v1"},
		{http.MethodGet, "/v2/library/app/manifests/v1"},
		{http.MethodHead, "/v2/library/app/manifests/" + want.String()},
		{http.MethodGet, "/v2/library/app/manifests/" + want.String()},
	} {
		resp := p.get(t, c.method, c.path)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
			t.Fatalf("%s %s while the store write waits: %d %s", c.method, c.path, resp.StatusCode, resp.Header.Get("Docker-Content-Digest"))
		}
	}
	if g, h := p.up.count("GET manifests"), p.up.count("HEAD manifests"); g != 1 || h != 0 {
		t.Fatalf("upstream saw %d GETs and %d HEADs of the manifest, want 1 and 0", g, h)
	}
	ctx := context.Background()
	if _, err := p.store.TagInfo(ctx, "docker.io/library/app", "v1"); !errors.Is(err, cache.ErrTagUnknown) && !errors.Is(err, cache.ErrRepoUnknown) {
		t.Fatalf("tag visible before its store write ended: %v", err)
	}
	unlock()
	if err := p.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ti, err := p.store.TagInfo(ctx, "docker.io/library/app", "v1")
	if err != nil || ti.Digest != d || ti.Fetched.IsZero() {
		t.Fatalf("after the write: tag %+v, %v", ti, err)
	}
	if _, _, err := p.store.GetManifest(ctx, "docker.io/library/app", d); err != nil {
		t.Fatalf("after the write: manifest: %v", err)
	}
}

// TestMirrorWriteLostAfterAnswer: the store write of an answered manifest
// dies (its database session killed, as a crash would end it): nothing of
// it is in the store — no tag without its manifest — and the next pull
// fetches it again and stores it.
func TestMirrorWriteLostAfterAnswer(t *testing.T) {
	p := newPGMirror(t)
	img := randomImage(t, 1024, 1)
	p.up.pushImage("library/app", "v1", img)
	want, _ := img.Digest()
	d, _ := cache.ParseDigest(want.String())
	ctx := context.Background()

	unlock := lockManifests(t, p.dsn)
	if resp := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("cold GET: %d", resp.StatusCode)
	}
	// The write's session is waiting on the lock: end it as a crash would.
	admin, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the mirror's store write never reached the database")
		}
		time.Sleep(10 * time.Millisecond) // polling the database, which nothing here can signal
	}
	if err := p.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	unlock()
	if _, err := p.store.TagInfo(ctx, "docker.io/library/app", "v1"); !errors.Is(err, cache.ErrTagUnknown) && !errors.Is(err, cache.ErrRepoUnknown) {
		t.Fatalf("a write that died left the tag: %v", err)
	}
	if _, err := p.store.StatManifest(ctx, "docker.io/library/app", d); !errors.Is(err, cache.ErrManifestUnknown) {
		t.Fatalf("a write that died left the manifest: %v", err)
	}
	if resp := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != want.String() {
		t.Fatalf("pull after the lost write: %d", resp.StatusCode)
	}
	if g := p.up.count("GET manifests"); g != 2 {
		t.Fatalf("upstream saw %d GETs, want 2 (the lost entry fetched again)", g)
	}
	if err := p.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if ti, err := p.store.TagInfo(ctx, "docker.io/library/app", "v1"); err != nil || ti.Digest != d {
		t.Fatalf("stored after the second pull: %+v, %v", ti, err)
	}
}

// TestMirrorColdPullRoundTrips: a cold pull through the mirror asks
// upstream what a client pulling straight from it would, and nothing
// more: one GET of the manifest by tag and one GET per blob (no HEAD, no
// second GET of the manifest for the HEAD and the GET by digest that
// follow while its store write may still run).
func TestMirrorColdPullRoundTrips(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/app", "v1", img)
	dg, _ := img.Digest()
	m, _ := img.Manifest()
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/v1", nil), http.StatusOK)
	env.wantStatus(env.do(http.MethodHead, "/v2/library/app/manifests/v1", nil), http.StatusOK)
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/manifests/"+dg.String(), nil), http.StatusOK)
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/blobs/"+m.Config.Digest.String(), nil), http.StatusOK)
	env.wantStatus(env.do(http.MethodGet, "/v2/library/app/blobs/"+m.Layers[0].Digest.String(), nil), http.StatusOK)
	if err := env.h.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	want := []string{"GET manifests library/app", "GET blobs library/app", "GET blobs library/app"}
	if got := env.up.requests(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("upstream saw %q, want %q", got, want)
	}
	// Stored now: served without upstream.
	env.wantStatus(env.do(http.MethodHead, "/v2/library/app/manifests/v1", nil), http.StatusOK)
	if n := env.up.total(); n != 3 {
		t.Fatalf("%d upstream requests, want 3", n)
	}
}

// TestMirrorPendingBytesBounded: the manifests a mirror holds while their
// store writes wait are bounded (maxPendingBytes); past the bound a
// manifest is stored before it is answered, so a store slower than the
// pulls slows them down instead of growing memory.
func TestMirrorPendingBytesBounded(t *testing.T) {
	p := newPGMirror(t)
	pad := strings.Repeat("x", 3<<20) // three of these pass 8 MiB
	for _, tag := range []string{"a", "b", "c"} {
		img, ok := mutate.Annotations(randomImage(t, 512, 1), map[string]string{"pad": tag + pad}).(v1.Image)
		if !ok {
			t.Fatal("not an image")
		}
		p.up.pushImage("library/big", tag, img)
	}
	unlock := lockManifests(t, p.dsn)
	for _, tag := range []string{"a", "b"} {
		if resp := p.get(t, http.MethodGet, "/v2/library/big/manifests/"+tag); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", tag, resp.StatusCode)
		}
	}
	answered := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+"/v2/library/big/manifests/c", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	// All three writes wait on the lock: a and b after their answers, c
	// before its own.
	waitLockWaiters(t, p.dsn, 3)
	select {
	case code := <-answered:
		t.Fatalf("c answered (%d) while the writes held 6 MiB and its own had not ended", code)
	default:
	}
	unlock()
	if code := <-answered; code != http.StatusOK {
		t.Fatalf("c after the writes ended: %d", code)
	}
}

// waitLockWaiters waits until n sessions of the database wait on a lock.
func waitLockWaiters(t *testing.T, dsn string, n int) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions wait on the lock, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond) // polling the database, which nothing here can signal
	}
}
