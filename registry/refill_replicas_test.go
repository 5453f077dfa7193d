package registry

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// twoReplicas are two registries, each on its own composite store, over
// one blob folder, one metadata database and one lease table (what two
// replicas share), mirroring docker.io from one upstream.
type twoReplicas struct {
	up     *fakeUpstream
	dir    string
	stores [2]*composite.Store
	srvs   [2]*httptest.Server
}

func newTwoReplicas(t *testing.T) *twoReplicas {
	t.Helper()
	meta, err := badgermeta.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = meta.Close() })
	leases := coord.NewLocal()
	tr := &twoReplicas{up: newFakeUpstream(t), dir: t.TempDir()}
	for i := range tr.stores {
		blobs, err := fs.New(fs.Options{Dir: tr.dir})
		if err != nil {
			t.Fatal(err)
		}
		st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: leases, SpoolDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		tr.stores[i], tr.srvs[i] = st, mirrorServer(t, st, st, tr.up.srv.URL)
	}
	return tr
}

// mirrorServer serves a registry on st that mirrors docker.io from
// upstream; when the test ends it stops the server, drains the handler
// and closes cs (st's composite store).
func mirrorServer(t *testing.T, st Store, cs *composite.Store, upstream string) *httptest.Server {
	t.Helper()
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{upstream}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Store: st, Logger: zaptest.NewLogger(t), Mirrors: []*Mirror{m}})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		cs.Close()
	})
	return srv
}

// waitFor polls cond for up to 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestReplicaRefillAbandoned: a mirrored blob whose bytes the storage
// lost is fetched again by one replica (A) while a GET on another (B)
// waits for A's fill; A's fill fails (upstream sent bytes that do not
// match the digest). B must fetch it itself, as it does for a cold blob
// whose filling replica gave up, and serve the blob whole. Before, B's
// wait took the blob's record, which stays from before the loss, for
// the commit of A's fill, and its read of the bytes failed: 502 "upstream
// failed" for a blob upstream serves well.
func TestReplicaRefillAbandoned(t *testing.T) {
	tr := newTwoReplicas(t)
	img := randomImage(t, 512<<10, 1)
	tr.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	d, _ := cache.ParseDigest(layer)
	p := "/v2/docker.io/library/app/blobs/" + layer
	resp, err := http.Get(tr.srvs[0].URL + p)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("cold GET: %s", resp.Status)
	}
	if f := tr.stores[0].Filling(context.Background(), d); f != nil {
		_ = f.Wait(context.Background())
	}
	if err := os.Remove(blobFile(tr.dir, layer)); err != nil {
		t.Fatal(err)
	}

	// A's refill: upstream sends a first chunk (its first byte flipped)
	// and waits.
	gate := make(chan struct{})
	tr.up.set(func(u *fakeUpstream) { u.gate, u.corrupt = gate, true })
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		resp, err := http.Get(tr.srvs[0].URL + p)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitFor(t, "A's refill", func() bool { return tr.up.count("GET blobs") == 2 })
	// B's GET finds the blob lost too, and waits for A's fill.
	type answer struct {
		status int
		body   []byte
		err    error
	}
	bGot := make(chan answer, 1)
	go func() {
		resp, err := http.Get(tr.srvs[1].URL + p)
		if err != nil {
			bGot <- answer{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		bGot <- answer{resp.StatusCode, b, err}
	}()
	waitFor(t, "B's wait for A's fill", func() bool { return tr.stores[1].Filling(context.Background(), d) != nil })
	// A's fill ends with bytes that fail the digest; upstream is well
	// from here on.
	tr.up.set(func(u *fakeUpstream) { u.gate, u.corrupt = nil, false })
	close(gate)
	<-aDone
	a := <-bGot
	if a.err != nil || a.status != http.StatusOK || string(a.body) != string(data) {
		t.Fatalf("GET on B after A's refill failed: %d, %d bytes, %v; want 200 and the blob's %d bytes (%q)",
			a.status, len(a.body), a.err, len(data), truncate(a.body))
	}
}

func truncate(b []byte) []byte {
	if len(b) > 200 {
		return b[:200]
	}
	return b
}

// TestReplicaWaitNotJoinedUnconfirmed: a GET on replica B for a name
// upstream refuses the blob under must not receive the bytes that
// replica A fetches for another name. B's first GET for that name waits
// for A's fill (its lease) and asks upstream, which says 404; a second
// GET for the same name found that wait in B's fills and joined it as if
// it were a fill started for its name, which asks upstream for it: it
// got the blob A fetched for the other repository, 200, with no question
// to upstream. On one node this cannot happen (every fill there asks
// upstream for the name it was started for).
func TestReplicaWaitNotJoinedUnconfirmed(t *testing.T) {
	tr := newTwoReplicas(t)
	secret, open := randomImage(t, 256<<10, 1), randomImage(t, 1024, 1)
	tr.up.pushImage("library/secret", "v1", secret)
	tr.up.pushImage("library/open", "v1", open)
	tr.up.holds("library/secret", secret)
	tr.up.holds("library/open", open)
	layer, _ := layerOf(t, secret)
	gate := make(chan struct{})
	tr.up.set(func(u *fakeUpstream) { u.strictBlobs, u.gate = true, gate })
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		resp, err := http.Get(tr.srvs[0].URL + "/v2/docker.io/library/secret/blobs/" + layer)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	waitFor(t, "A's fill", func() bool { return tr.up.count("GET blobs") == 1 })
	p := tr.srvs[1].URL + "/v2/docker.io/library/open/blobs/" + layer
	resp, err := http.Get(p)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("first GET on B under a name upstream refuses: %s, want 404", resp.Status)
	}
	heads := tr.up.count("HEAD blobs")
	type answer struct {
		status int
		n      int
	}
	got := make(chan answer, 1)
	go func() {
		resp, err := http.Get(p)
		if err != nil {
			got <- answer{}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- answer{resp.StatusCode, len(b)}
	}()
	// The second GET asks upstream (as it must), or, as before, joins the
	// wait without asking: then give it time to join before A's fill ends.
	for deadline := time.Now().Add(time.Second); tr.up.count("HEAD blobs") == heads && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	close(gate)
	<-aDone
	if a := <-got; a.status != http.StatusNotFound {
		t.Fatalf("second GET on B under a name upstream refuses the blob: %d with %d bytes, want 404", a.status, a.n)
	}
}

// lingeringFill is a composite store that keeps listing a fill after it
// committed, as a store does for a moment between the commit and the
// fill's removal from its table: the window where a GET joins a fill
// whose bytes are committed, widened so a test can cut them there.
type lingeringFill struct {
	*composite.Store
	f cache.Fill
}

func (s *lingeringFill) Filling(ctx context.Context, d cache.Digest) cache.Fill {
	if s.f != nil && s.f.Digest() == d {
		return s.f
	}
	return s.Store.Filling(ctx, d)
}

// TestMirrorJoinedFillLostSince: a GET joins a fill of its repository
// that committed, and whose bytes the storage lost or holds cut short
// since (behind the registry's back). It must fetch them again, as a GET
// that reads the store does, not answer 502 as if upstream had failed
// (seen in CI: the read-cache case of caddymodule's
// TestS3BlobLostOrDamagedHeals, where the cut landed in that moment).
func TestMirrorJoinedFillLostSince(t *testing.T) {
	for _, cut := range []string{"removed", "cut short"} {
		t.Run(cut, func(t *testing.T) {
			up := newFakeUpstream(t)
			img := randomImage(t, 256<<10, 1)
			up.pushImage("library/app", "v1", img)
			layer, data := layerOf(t, img)
			d, _ := cache.ParseDigest(layer)
			dir := t.TempDir()
			meta, err := badgermeta.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = meta.Close() })
			blobs, err := fs.New(fs.Options{Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			cs, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: coord.NewLocal(), SpoolDir: t.TempDir()})
			if err != nil {
				t.Fatal(err)
			}
			st := &lingeringFill{Store: cs}
			srv := mirrorServer(t, st, cs, up.srv.URL)
			get := func(what string, fetches int) {
				t.Helper()
				resp, err := http.Get(srv.URL + "/v2/docker.io/library/app/blobs/" + layer)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || err != nil || string(body) != string(data) {
					t.Fatalf("GET of a mirrored blob %s: %s, %d bytes (%v)", what, resp.Status, len(body), err)
				}
				if n := up.count("GET blobs"); n != fetches {
					t.Fatalf("GET of a mirrored blob %s: %d upstream GETs, want %d", what, n, fetches)
				}
			}
			get("cold", 1)
			if f := cs.Filling(context.Background(), d); f != nil {
				_ = f.Wait(context.Background())
			}
			// The blob is recorded: what the store gives is its
			// committed fill.
			f, started, err := cs.FillAdmitted(context.Background(), "docker.io/library/app", d, nil, nil)
			if err != nil || started {
				t.Fatalf("FillAdmitted of a committed blob: started %v, %v", started, err)
			}
			st.f = f
			path := blobFile(dir, layer)
			if cut == "removed" {
				err = os.Remove(path)
			} else {
				err = os.Truncate(path, int64(len(data)/3))
			}
			if err != nil {
				t.Fatal(err)
			}
			get("joined after its bytes were "+cut, 2)
			st.f = nil
			get("fetched again", 2)
		})
	}
}
