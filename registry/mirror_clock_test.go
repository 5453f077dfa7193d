package registry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/pgmeta"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestMirrorTagTTLSteppedReplica: two replicas on one PostgreSQL and one
// blob folder mirror docker.io; one's wall clock reads ten minutes ahead
// (stepped while it runs). A tag the other fetched a moment ago is within
// tag_ttl for it too: it asks upstream nothing. Before, the tag's fetch
// time was stamped on the fetching replica's clock and judged on the
// reading one's, so the stepped replica saw every tag as ten minutes old
// and asked upstream on every pull (and held its own stamps ten minutes
// past tag_ttl on the others).
func TestMirrorTagTTLSteppedReplica(t *testing.T) {
	up := newFakeUpstream(t)
	img := randomImage(t, 1024, 1)
	up.pushImage("library/app", "v1", img)
	dsn := pgtest.NewDatabase(t)
	dir := t.TempDir()
	var srvs [2]*httptest.Server
	var stores [2]*composite.Store
	for i, step := range []time.Duration{0, 10 * time.Minute} {
		meta, err := pgmeta.Open(context.Background(), pgmeta.Options{DSN: dsn})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(meta.Close)
		blobs, err := fs.New(fs.Options{Dir: dir})
		if err != nil {
			t.Fatal(err)
		}
		// The process's wall clock, as the store and the mirror read it.
		wall := func() time.Time { return time.Now().Add(step) }
		st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases(), SpoolDir: t.TempDir(), LocalClock: wall})
		if err != nil {
			t.Fatal(err)
		}
		m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true})
		if err != nil {
			t.Fatal(err)
		}
		m.now = wall
		h := New(Config{Store: st, Logger: zaptest.NewLogger(t), Mirrors: []*Mirror{m}})
		srv := httptest.NewServer(h)
		t.Cleanup(func() {
			srv.Close()
			_ = h.Drain(context.Background())
			st.Close()
		})
		srvs[i], stores[i] = srv, st
	}
	// The stepped replica's first reading of PostgreSQL's clock.
	time.Sleep(500 * time.Millisecond)
	get := func(srv *httptest.Server) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v2/library/app/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("pull: %s", resp.Status)
		}
	}
	get(srvs[0])
	// The fetch is stored behind the answer.
	waitFor(t, "the tag stored", func() bool {
		ti, err := stores[0].TagInfo(context.Background(), "docker.io/library/app", "v1")
		return err == nil && !ti.Fetched.IsZero()
	})
	before := up.total()
	for range 5 {
		get(srvs[1])
	}
	if n := up.total() - before; n != 0 {
		up.mu.Lock()
		t.Errorf("5 pulls through the stepped replica of a tag fetched a moment ago asked upstream %d times (%v), want 0 (within tag_ttl)", n, up.counts)
		up.mu.Unlock()
	}
}
