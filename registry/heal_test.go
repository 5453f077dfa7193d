package registry

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
)

// folderRegistry is a registry on the composite store over a blob folder
// (badger metadata, leases in process), docker.io mirrored from a fake
// upstream and team/ local: a single node with `storage <folder>`.
type folderRegistry struct {
	up   *fakeUpstream
	srv  *httptest.Server
	st   *composite.Store
	h    *Handler
	blob string // the blob folder
}

// settle waits for the fill of d, if any, to commit: its client has every
// byte before that.
func (fr *folderRegistry) settle(d string) {
	dg, _ := cache.ParseDigest(d)
	if f := fr.st.Filling(context.Background(), dg); f != nil {
		_ = f.Wait(context.Background())
	}
}

// newFolderStore is the composite store over a storage folder (returned
// too) and badger, as one replica's; the caller closes it.
func newFolderStore(t *testing.T) (*composite.Store, string) {
	t.Helper()
	meta, err := badgermeta.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = meta.Close() })
	dir := t.TempDir()
	blobs, err := fs.New(fs.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: coord.NewLocal(), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return st, dir
}

func newFolderRegistry(t *testing.T) *folderRegistry {
	t.Helper()
	st, dir := newFolderStore(t)
	up := newFakeUpstream(t)
	m, err := NewMirror(MirrorConfig{Prefix: "docker.io", Upstreams: []string{up.srv.URL}, Default: true})
	if err != nil {
		t.Fatal(err)
	}
	h := New(Config{Store: st, Logger: zaptest.NewLogger(t), Mirrors: []*Mirror{m}, LocalPrefixes: []string{"team"}})
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		_ = h.Drain(context.Background())
		st.Close()
	})
	return &folderRegistry{up: up, srv: srv, st: st, h: h, blob: dir}
}

func (fr *folderRegistry) do(t *testing.T, method, path string, body []byte, hdr ...string) (*http.Response, []byte, error) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, fr.srv.URL+path, rd)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

func blobFile(dir string, d string) string {
	return filepath.Join(dir, "blobs", "sha256", d[7:9], d[7:])
}

// TestFolderMirrorBlobLostHeals: a mirrored blob whose file is removed
// from the blob folder, or cut short, behind the registry's back (an
// operator, fsck) is a miss: the next GET fetches it from upstream once,
// stores it again and serves it whole; a HEAD says what upstream says.
// Before, the metadata's record made it a hit: 404 for a removed file,
// and for a cut one a whole-blob GET broken off, a ranged GET a clean
// short answer.
func TestFolderMirrorBlobLostHeals(t *testing.T) {
	fr := newFolderRegistry(t)
	img := randomImage(t, 64<<10, 1)
	fr.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	p := "/v2/docker.io/library/app/blobs/" + layer
	get := func(what string, fetches int, hdr ...string) {
		t.Helper()
		resp, body, err := fr.do(t, http.MethodGet, p, nil, hdr...)
		if resp.StatusCode/100 != 2 || err != nil || !bytes.Equal(body, data) {
			t.Fatalf("GET %s: %s, %d of %d bytes (%v)", what, resp.Status, len(body), len(data), err)
		}
		if n := fr.up.count("GET blobs"); n != fetches {
			t.Fatalf("GET %s: %d upstream GETs, want %d", what, n, fetches)
		}
		fr.settle(layer)
	}
	get("cold", 1)
	get("warm", 1)
	if err := os.Remove(blobFile(fr.blob, layer)); err != nil {
		t.Fatal(err)
	}
	if resp, _, _ := fr.do(t, http.MethodHead, p, nil); resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) {
		t.Fatalf("HEAD of a blob whose file was removed: %s, %d bytes", resp.Status, resp.ContentLength)
	}
	get("of a blob whose file was removed", 2)
	get("once fetched again", 2)
	for i, hdr := range [][]string{nil, {"Range", "bytes=0-"}, {"If-None-Match", `"x"`}} {
		if err := os.WriteFile(blobFile(fr.blob, layer), data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		get("of a blob whose file was cut short "+filepath.Join(hdr...), 3+i, hdr...)
	}
	if fi, err := os.Stat(blobFile(fr.blob, layer)); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("blob file after the fetch: %v, %v", fi, err)
	}
	// Upstream down: its failure is the answer, not a 404 for a blob
	// upstream may hold, nor the lost copy.
	if err := os.Remove(blobFile(fr.blob, layer)); err != nil {
		t.Fatal(err)
	}
	fr.up.set(func(u *fakeUpstream) { u.failRepos["library/app"] = http.StatusServiceUnavailable })
	for _, m := range []string{http.MethodHead, http.MethodGet} {
		if resp, _, _ := fr.do(t, m, p, nil); resp.StatusCode/100 != 5 {
			t.Fatalf("%s of a lost blob with upstream down: %s, want upstream's failure (5xx), as for a cold miss", m, resp.Status)
		}
	}
	fr.settle(layer) // a fill the failure started has given up
	fr.up.set(func(u *fakeUpstream) { delete(u.failRepos, "library/app") })
	get("once upstream is back", fr.up.count("GET blobs")+1)
}

// TestFolderPushedBlobCutShort: a pushed blob whose file was cut short
// answers 404 BLOB_UNKNOWN to HEAD and GET, ranged or not (before: HEAD
// 200, a whole GET broken off, a ranged GET a clean short 206), so a
// client that HEADs before pushing uploads it again; the push, whole or
// in chunks, replaces the file and the blob serves whole.
func TestFolderPushedBlobCutShort(t *testing.T) {
	fr := newFolderRegistry(t)
	for _, chunked := range []bool{false, true} {
		data := randomBytes(t, 100<<10)
		d := cache.FromBytes(cache.SHA256, data).String()
		push := func() {
			t.Helper()
			if !chunked {
				if resp, _, _ := fr.do(t, http.MethodPost, "/v2/team/app/blobs/uploads/?digest="+d, data); resp.StatusCode != http.StatusCreated {
					t.Fatalf("push: %s", resp.Status)
				}
				return
			}
			resp, _, _ := fr.do(t, http.MethodPost, "/v2/team/app/blobs/uploads/", nil)
			loc := resp.Header.Get("Location")
			if resp, _, _ = fr.do(t, http.MethodPatch, loc, data, "Content-Type", "application/octet-stream"); resp.StatusCode != http.StatusAccepted {
				t.Fatalf("PATCH: %s", resp.Status)
			}
			loc = resp.Header.Get("Location")
			sep := "?"
			if bytes.ContainsRune([]byte(loc), '?') {
				sep = "&"
			}
			if resp, _, _ = fr.do(t, http.MethodPut, loc+sep+"digest="+d, nil); resp.StatusCode != http.StatusCreated {
				t.Fatalf("PUT: %s", resp.Status)
			}
		}
		push()
		if err := os.WriteFile(blobFile(fr.blob, d), data[:len(data)-7], 0o644); err != nil {
			t.Fatal(err)
		}
		p := "/v2/team/app/blobs/" + d
		for _, hdr := range [][]string{nil, {"Range", "bytes=0-"}} {
			for _, m := range []string{http.MethodHead, http.MethodGet} {
				resp, body, err := fr.do(t, m, p, nil, hdr...)
				if resp.StatusCode != http.StatusNotFound {
					t.Fatalf("%s %v of a blob cut short: %s, %d bytes (%v), want 404", m, hdr, resp.Status, len(body), err)
				}
			}
		}
		push()
		resp, body, err := fr.do(t, http.MethodGet, p, nil)
		if resp.StatusCode != http.StatusOK || err != nil || !bytes.Equal(body, data) {
			t.Fatalf("GET after the push again (chunked %v): %s, %d bytes (%v)", chunked, resp.Status, len(body), err)
		}
	}
}

// TestMirrorBlobFileRemovedRefetched: on the single-node store, a
// mirrored blob whose file was removed by hand is fetched again.
func TestMirrorBlobFileRemovedRefetched(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 4096, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	p := "/v2/docker.io/library/app/blobs/" + layer
	env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusOK)
	d, _ := cache.ParseDigest(layer)
	if f := env.store.Filling(context.Background(), d); f != nil {
		_ = f.Wait(context.Background()) // the client has every byte before the commit
	}
	if err := os.Remove(blobFile(env.dir, layer)); err != nil {
		t.Fatal(err)
	}
	env.wantStatus(env.do(http.MethodHead, p, nil), http.StatusOK)
	if resp := env.do(http.MethodGet, p, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, data) {
		t.Fatalf("GET of a blob whose file was removed: %s, %d bytes", resp.Status, len(resp.body))
	}
	if n := env.up.count("GET blobs"); n != 2 {
		t.Fatalf("upstream blob GETs: %d, want 2", n)
	}
}

// TestFolderMirrorLostBlobFetchedOnce: many clients pulling a mirrored
// blob the storage lost share one fetch from upstream (the mirror's
// single fill), each served the whole blob.
func TestFolderMirrorLostBlobFetchedOnce(t *testing.T) {
	fr := newFolderRegistry(t)
	img := randomImage(t, 512<<10, 1)
	fr.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	p := "/v2/docker.io/library/app/blobs/" + layer
	if resp, _, _ := fr.do(t, http.MethodGet, p, nil); resp.StatusCode != http.StatusOK {
		t.Fatalf("cold GET: %s", resp.Status)
	}
	fr.settle(layer)
	if err := os.Remove(blobFile(fr.blob, layer)); err != nil {
		t.Fatal(err)
	}
	// Upstream sends its first chunk, then waits until every client has
	// some of it: by then each has joined the one fill.
	gate := make(chan struct{})
	fr.up.set(func(u *fakeUpstream) { u.gate = gate })
	const clients = 6
	started := make(chan struct{}, clients)
	errs := make(chan error, clients)
	for range clients {
		go func() {
			resp, err := http.Get(fr.srv.URL + p)
			if err != nil {
				started <- struct{}{}
				errs <- err
				return
			}
			defer resp.Body.Close()
			first := make([]byte, 1024)
			_, err = io.ReadFull(resp.Body, first)
			started <- struct{}{}
			if err != nil {
				errs <- fmt.Errorf("%s: %w", resp.Status, err)
				return
			}
			rest, err := io.ReadAll(resp.Body)
			if err == nil && (resp.StatusCode != http.StatusOK || !bytes.Equal(append(first, rest...), data)) {
				err = fmt.Errorf("%s, %d bytes, want the blob's %d", resp.Status, len(first)+len(rest), len(data))
			}
			errs <- err
		}()
	}
	for range clients {
		<-started
	}
	close(gate)
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("GET of a lost blob: %v", err)
		}
	}
	if n := fr.up.count("GET blobs"); n != 2 {
		t.Fatalf("upstream blob GETs: %d, want 2 (the cold pull and one fetch again)", n)
	}
}

// TestSingleNodePushedBlobCutShort: on the single-node store (a folder
// and badger, the default), a pushed blob whose file was cut short
// answers 404 BLOB_UNKNOWN to HEAD and to GET, whole or ranged, and a
// push again, whole or in chunks, replaces the file. Before, the file's
// length was taken for the blob's: HEAD 200 and GET 200 with the cut
// bytes, a clean answer a client could only catch by its digest.
func TestSingleNodePushedBlobCutShort(t *testing.T) {
	tr := newTestRegistry(t)
	for _, chunked := range []bool{false, true} {
		data := randomBytes(t, 100<<10)
		d := cache.FromBytes(cache.SHA256, data)
		push := func() {
			t.Helper()
			if !chunked {
				tr.pushBlob("team/app", data)
				return
			}
			loc := tr.startUpload("team/app")
			resp := tr.do(http.MethodPatch, loc, data, "Content-Type", "application/octet-stream")
			tr.wantStatus(resp, http.StatusAccepted)
			loc = resp.Header.Get("Location")
			sep := "?"
			if bytes.ContainsRune([]byte(loc), '?') {
				sep = "&"
			}
			tr.wantStatus(tr.do(http.MethodPut, loc+sep+"digest="+d.String(), nil), http.StatusCreated)
		}
		push()
		if err := os.WriteFile(blobFile(tr.dir, d.String()), data[:len(data)-7], 0o644); err != nil {
			t.Fatal(err)
		}
		p := "/v2/team/app/blobs/" + d.String()
		for _, hdr := range [][]string{nil, {"Range", "bytes=0-"}, {"Range", "bytes=10-20"}} {
			for _, m := range []string{http.MethodHead, http.MethodGet} {
				tr.wantError(tr.do(m, p, nil, hdr...), http.StatusNotFound, "BLOB_UNKNOWN")
			}
		}
		push()
		resp := tr.do(http.MethodGet, p, nil)
		if resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, data) {
			t.Fatalf("GET after the push again (chunked %v): %s, %d bytes", chunked, resp.Status, len(resp.body))
		}
	}
}

// TestSingleNodeMirrorBlobCutShortRefetched: on the single-node store, a
// mirrored blob whose file was cut short is a miss: a GET, whole, ranged
// or conditional, fetches it from upstream again and serves it whole, and
// the file is whole again. Before, the cut bytes were served as the blob.
func TestSingleNodeMirrorBlobCutShortRefetched(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 64<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, data := layerOf(t, img)
	d, _ := cache.ParseDigest(layer)
	p := "/v2/docker.io/library/app/blobs/" + layer
	settle := func() {
		if f := env.store.Filling(context.Background(), d); f != nil {
			_ = f.Wait(context.Background())
		}
	}
	env.wantStatus(env.do(http.MethodGet, p, nil), http.StatusOK)
	settle()
	for i, hdr := range [][]string{nil, {"Range", "bytes=0-"}, {"If-None-Match", `"x"`}} {
		if err := os.WriteFile(blobFile(env.dir, layer), data[:len(data)/2], 0o644); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			resp := env.do(http.MethodHead, p, nil)
			if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(data)) {
				t.Fatalf("HEAD of a blob cut short: %s, %d bytes, want 200 with the blob's %d", resp.Status, resp.ContentLength, len(data))
			}
		}
		resp := env.do(http.MethodGet, p, nil, hdr...)
		if resp.StatusCode/100 != 2 || !bytes.Equal(resp.body, data) {
			t.Fatalf("GET %v of a blob cut short: %s, %d of %d bytes", hdr, resp.Status, len(resp.body), len(data))
		}
		if n := env.up.count("GET blobs"); n != 2+i {
			t.Fatalf("GET %v of a blob cut short: %d upstream GETs, want %d", hdr, n, 2+i)
		}
		settle()
	}
	if fi, err := os.Stat(blobFile(env.dir, layer)); err != nil || fi.Size() != int64(len(data)) {
		t.Fatalf("blob file after the fetch: %v, %v", fi, err)
	}
}

// TestSyncRefetchesLostBlob: the scheduled sync (SyncSource.Blob) of a
// mirrored blob whose file was removed or cut short behind the
// registry's back fetches it from upstream again, on the single node and
// on a folder under the composite store. Before, the composite store's
// record made it a blob sync had (nothing fetched, the loss found only by
// the next pull); the single node refetched a removed file only.
func TestSyncRefetchesLostBlob(t *testing.T) {
	type env struct {
		h   *Handler
		up  *fakeUpstream
		dir string
		get func(p string) int
	}
	stores := []struct {
		name string
		open func(t *testing.T) env
	}{
		{"single node", func(t *testing.T) env {
			e := newMirrorEnv(t)
			return env{e.h, e.up, e.dir, func(p string) int { return e.do(http.MethodGet, p, nil).StatusCode }}
		}},
		{"folder", func(t *testing.T) env {
			fr := newFolderRegistry(t)
			return env{fr.h, fr.up, fr.blob, func(p string) int {
				resp, _, _ := fr.do(t, http.MethodGet, p, nil)
				fr.settle(p[strings.LastIndex(p, "/")+1:])
				return resp.StatusCode
			}}
		}},
	}
	for _, sc := range stores {
		t.Run(sc.name, func(t *testing.T) {
			e := sc.open(t)
			img := randomImage(t, 64<<10, 1)
			e.up.pushImage("library/app", "v1", img)
			layer, data := layerOf(t, img)
			d, _ := cache.ParseDigest(layer)
			if code := e.get("/v2/docker.io/library/app/blobs/" + layer); code != http.StatusOK {
				t.Fatalf("cold GET: %d", code)
			}
			src := e.h.SyncSource(e.h.mirrors["docker.io"])
			if fetched, err := src.Blob(context.Background(), "library/app", d); err != nil || fetched {
				t.Fatalf("sync of a blob stored whole: fetched %v, %v", fetched, err)
			}
			damages := []func(string) error{
				os.Remove,
				func(p string) error { return os.WriteFile(p, data[:len(data)/2], 0o644) },
			}
			for i, damage := range damages {
				if err := damage(blobFile(e.dir, layer)); err != nil {
					t.Fatal(err)
				}
				if fetched, err := src.Blob(context.Background(), "library/app", d); err != nil || !fetched {
					t.Fatalf("sync of a blob lost (%d): fetched %v, %v", i, fetched, err)
				}
				if fi, err := os.Stat(blobFile(e.dir, layer)); err != nil || fi.Size() != int64(len(data)) {
					t.Fatalf("blob file after the sync (%d): %v, %v", i, fi, err)
				}
				if n := e.up.count("GET blobs"); n != 2+i {
					t.Fatalf("upstream blob GETs: %d, want %d", n, 2+i)
				}
			}
		})
	}
}
