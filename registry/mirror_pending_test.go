package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
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

// Each metadata call may take a minute, not pgmeta's 5 s: the tests hold
// store writes on a lock for as long as they need, and on a loaded
// machine (-race, CI) that may pass 5 s; a write that gave up early
// would free what it held and prove nothing.
// Its pool has room for more store writes than the handler holds, so
// that each one held reaches the database. prefixes name more mirrors of
// the same upstream.
func newPGMirror(t *testing.T, prefixes ...string) *pgMirror {
	t.Helper()
	dsn := pgtest.NewDatabase(t)
	// These tests hold store writes on a table lock for as long as they
	// need. pgmeta's default 5s bound on a call could end a held write
	// before a loaded machine has set up the rest of the test.
	meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: dsn + "&pool_max_conns=40", Timeout: time.Minute})
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
	var mirrors []*Mirror
	for i, prefix := range append([]string{"docker.io"}, prefixes...) {
		m, err := NewMirror(MirrorConfig{Prefix: prefix, Upstreams: []string{up.srv.URL}, Default: i == 0})
		if err != nil {
			t.Fatal(err)
		}
		mirrors = append(mirrors, m)
	}
	h := New(Config{Store: st, Logger: zaptest.NewLogger(t), Mirrors: mirrors})
	h.pending.timeout = time.Minute // as the metadata calls'
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

// TestMirrorPendingBytesBounded: the manifests a handler holds while their
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

// TestMirrorFetchTimeIsTheAnswers: a tag's fetch time is when upstream
// answered, also when the store write runs later. Written with the time of
// the write, a tag answered just before its TTL ran out and stored after
// would count as fresh for a whole TTL more, with no upstream asked.
func TestMirrorFetchTimeIsTheAnswers(t *testing.T) {
	p := newPGMirror(t)
	var now atomic.Int64
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	now.Store(t0.UnixNano())
	p.h.mirrors["docker.io"].now = func() time.Time { return time.Unix(0, now.Load()).UTC() }
	img := randomImage(t, 1024, 1)
	p.up.pushImage("library/app", "v1", img)

	unlock := lockManifests(t, p.dsn)
	if resp := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	now.Store(t0.Add(time.Hour).UnixNano()) // the write runs an hour later
	unlock()
	ctx := context.Background()
	if err := p.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	ti, err := p.store.TagInfo(ctx, "docker.io/library/app", "v1")
	if err != nil {
		t.Fatal(err)
	}
	if !ti.Fetched.Equal(t0) {
		t.Fatalf("tag fetched at %s, want the answer's %s", ti.Fetched, t0)
	}
}

// getLater sends a GET in the background; its status (0 if it failed)
// comes on the channel.
func (p *pgMirror) getLater(path string) <-chan int {
	answered := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.srv.URL+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	return answered
}

// TestMirrorPendingWritesBounded: the store writes a handler runs after
// their answers are bounded in number too (maxPendingWrites), across its
// mirrors: with that many held on a lock, the next cold manifest, however
// small, is stored before it is answered.
func TestMirrorPendingWritesBounded(t *testing.T) {
	p := newPGMirror(t, "ghcr.io")
	unlock := lockManifests(t, p.dsn)
	// Each tag a manifest of its own (writes of one digest take turns),
	// half of them through each mirror.
	for i := range maxPendingWrites {
		img := randomImage(t, 256, 1)
		path := fmt.Sprintf("/v2/library/small/manifests/%d", i)
		if i%2 == 1 {
			path = "/ghcr.io" + path
		}
		p.up.pushImage("library/small", fmt.Sprint(i), img)
		if resp := p.get(t, http.MethodGet, path); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
	}
	p.up.pushImage("library/small", "last", randomImage(t, 256, 1))
	answered := p.getLater("/v2/library/small/manifests/last")
	waitLockWaiters(t, p.dsn, maxPendingWrites+1)
	select {
	case code := <-answered:
		t.Fatalf("answered (%d) while %d writes were held and its own had not ended", code, maxPendingWrites)
	default:
	}
	unlock()
	if code := <-answered; code != http.StatusOK {
		t.Fatalf("after the writes ended: %d", code)
	}
}

// TestMirrorDrainingStoresBeforeAnswering: once Drain was called (a
// reload or shutdown, the store about to close), a cold manifest is
// stored before it is answered: no write starts that Drain does not wait
// for.
func TestMirrorDrainingStoresBeforeAnswering(t *testing.T) {
	p := newPGMirror(t)
	img := randomImage(t, 256, 1)
	p.up.pushImage("library/app", "v1", img)
	unlock := lockManifests(t, p.dsn)
	if err := p.h.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	answered := p.getLater("/v2/library/app/manifests/v1")
	waitLockWaiters(t, p.dsn, 1)
	select {
	case code := <-answered:
		t.Fatalf("answered (%d) after Drain, before its store write ended", code)
	default:
	}
	unlock()
	if code := <-answered; code != http.StatusOK {
		t.Fatalf("after the write ended: %d", code)
	}
	want, _ := img.Digest()
	if ti, err := p.store.TagInfo(context.Background(), "docker.io/library/app", "v1"); err != nil || ti.Digest.String() != want.String() {
		t.Fatalf("stored before the answer: %+v, %v", ti, err)
	}
}

// TestSyncStoresWhatAPullsWriteLost: sync's Tag shares the upstream fetch
// of a pull that came first; the pull is answered before its store write
// ends, and that write fails (its database session killed). Sync must not
// report the tag stored when it is not: it stores the manifest itself.
func TestSyncStoresWhatAPullsWriteLost(t *testing.T) {
	p := newPGMirror(t)
	img := randomImage(t, 256, 1)
	p.up.pushImage("library/app", "v1", img)
	want, _ := img.Digest()
	ctx := context.Background()
	gate := make(chan struct{})
	p.up.set(func(u *fakeUpstream) { u.manifestGate = gate })
	unlock := lockManifests(t, p.dsn)

	answered := p.getLater("/v2/library/app/manifests/v1")
	for p.up.count("GET manifests") == 0 {
		time.Sleep(time.Millisecond) // polling the upstream, which nothing here can signal
	}
	synced := make(chan error, 1)
	go func() {
		_, _, err := p.h.SyncSource(p.h.mirrors["docker.io"]).Tag(ctx, "library/app", "v1")
		synced <- err
	}()
	waitGoroutine(t, nil, "(*SyncSource).Tag", "singleflight.(*Group).Do(", "!singleflight.(*Group).doCall")
	close(gate)
	if code := <-answered; code != http.StatusOK {
		t.Fatalf("pull: %d", code)
	}
	waitLockWaiters(t, p.dsn, 1)
	killLockWaiters(t, p.dsn)
	unlock()
	err := <-synced
	ti, terr := p.store.TagInfo(ctx, "docker.io/library/app", "v1")
	if err == nil && (terr != nil || ti.Digest.String() != want.String()) {
		t.Fatalf("sync reported the tag stored; the store has %+v, %v", ti, terr)
	}
	if err != nil {
		t.Fatalf("sync: %v (it could store the tag itself)", err)
	}
	if n := p.up.count("GET manifests"); n != 1 {
		t.Fatalf("upstream saw %d GETs of the manifest, want 1 (sync shared the pull's)", n)
	}
}

// TestMirrorTagWritesInOrder: a store of a tag that does not answer first
// (sync without a policy, the cosign .sig tag of pullSignatures: both
// fetchManifest) takes its turn after a pull's write of the same tag that
// still runs, so the tag ends on what was fetched last. The pull's write
// of A is held on A's manifest row only, so that a write of B that did
// not wait would land first.
func TestMirrorTagWritesInOrder(t *testing.T) {
	p := newPGMirror(t)
	a, b := randomImage(t, 256, 1), randomImage(t, 256, 1)
	da, _ := a.Digest()
	db, _ := b.Digest()
	p.up.pushImage("library/app", "v1", a)
	ctx := context.Background()
	repo := "docker.io/library/app"
	rc := &request{name: repo, typed: repo, mirror: p.h.mirrors["docker.io"]}
	// A in the store by digest, so that its row can be locked.
	want, _ := cache.ParseDigest(da.String())
	if _, err := p.h.fetchManifest(ctx, rc, da.String(), want, ""); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var one int
	if err := tx.QueryRow(ctx, "SELECT 1 FROM manifests WHERE repo = $1 AND digest = $2 FOR UPDATE", repo, da.String()).Scan(&one); err != nil {
		t.Fatal(err)
	}

	if resp := p.get(t, http.MethodGet, "/v2/library/app/manifests/v1"); resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != da.String() {
		t.Fatalf("pull of v1 (A): %d", resp.StatusCode)
	}
	waitLockWaiters(t, p.dsn, 1) // A's write, on A's row
	p.up.pushImage("library/app", "v1", b)
	stored := make(chan error, 1)
	go func() {
		_, err := p.h.fetchManifest(ctx, rc, "v1", cache.Digest{}, "v1")
		stored <- err
	}()
	// B's store either ended (not in turn) or waits for A's.
	waitGoroutine(t, stored, "(*Handler).storeInTurn", "(*Handler).fetchManifest")
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if err := p.h.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if ti, err := p.store.TagInfo(ctx, repo, "v1"); err != nil || ti.Digest.String() != db.String() {
		t.Fatalf("v1 is on %s (%v), want B %s, fetched last", ti.Digest, err, db)
	}
}

// waitGoroutine waits until some goroutine's stack has each of frames
// (those starting with "!" it must not have), or done is ready.
func waitGoroutine(t *testing.T, done <-chan error, frames ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		if len(done) > 0 {
			return
		}
		n := runtime.Stack(buf, true)
		for g := range strings.SplitSeq(string(buf[:n]), "\n\n") {
			ok := true
			for _, f := range frames {
				if not, neg := strings.CutPrefix(f, "!"); neg {
					ok = ok && !strings.Contains(g, not)
				} else {
					ok = ok && strings.Contains(g, f)
				}
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine in %q", frames)
		}
		time.Sleep(time.Millisecond) // polling the runtime, which nothing here can signal
	}
}

// killLockWaiters ends the database sessions that wait on a lock, as a
// crash would.
func killLockWaiters(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`); err != nil {
		t.Fatal(err)
	}
}
