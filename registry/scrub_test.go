package registry

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache"
)

// flipFileByte changes one byte of the file at path, keeping its length.
func flipFileByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x80
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// TestScrubHealsSingleNode: on the single-node store, blobs whose bytes
// changed at the same length were served as they were, 200 and clean,
// for ever (a client's digest check failed every pull). After a scrub
// pass, a mirrored one is fetched from upstream again at the next pull
// and served whole, and a pushed one answers 404 BLOB_UNKNOWN, so the
// client pushes it again, which stores it whole.
func TestScrubHealsSingleNode(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 64<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, mirrored := layerOf(t, img)
	mp := "/v2/docker.io/library/app/blobs/" + layer
	env.wantStatus(env.do(http.MethodGet, mp, nil), http.StatusOK)
	if d, _ := cache.ParseDigest(layer); env.store.Filling(context.Background(), d) != nil {
		_ = env.store.Filling(context.Background(), d).Wait(context.Background())
	}
	pushed := randomBytes(t, 100<<10)
	pd := env.pushBlob("team/app", pushed)
	pp := "/v2/team/app/blobs/" + pd.String()

	flipFileByte(t, blobFile(env.dir, layer), 1000)
	flipFileByte(t, blobFile(env.dir, pd.String()), 5000)
	for _, p := range []string{mp, pp} {
		if resp := env.do(http.MethodGet, p, nil); resp.StatusCode != http.StatusOK || len(resp.body) == 0 {
			t.Fatalf("GET %s before the scrub: %s", p, resp.Status)
		}
	}

	rep, err := env.store.Scrub(context.Background(), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Damaged) != 2 {
		t.Fatalf("scrub: %+v, want 2 damaged", rep)
	}
	resp := env.do(http.MethodGet, mp, nil)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, mirrored) {
		t.Fatalf("GET of the damaged mirrored blob after the scrub: %s, %d bytes (want upstream's %d)", resp.Status, len(resp.body), len(mirrored))
	}
	if n := env.up.count("GET blobs"); n != 2 {
		t.Fatalf("upstream blob GETs: %d, want 2 (the cold pull and one fetch again)", n)
	}
	env.wantError(env.do(http.MethodHead, pp, nil), http.StatusNotFound, "BLOB_UNKNOWN")
	env.pushBlob("team/app", pushed)
	if resp := env.do(http.MethodGet, pp, nil); resp.StatusCode != http.StatusOK || !bytes.Equal(resp.body, pushed) {
		t.Fatalf("GET after the push again: %s, %d bytes", resp.Status, len(resp.body))
	}
}

// TestMirrorFillLocalCopyFailureNotUpstream: a cold pull on the single
// node whose fill cannot write its local copy (the temporary folder
// unusable, as a disk remounted read-only is) is the storage's failure:
// never 502 "upstream failed". Seen in e2e TestReadOnlyBlobDisk: when the
// fill had failed before the handler read its first byte, the read-only
// disk was reported as upstream's failure.
func TestMirrorFillLocalCopyFailureNotUpstream(t *testing.T) {
	env := newMirrorEnv(t)
	img := randomImage(t, 64<<10, 1)
	env.up.pushImage("library/app", "v1", img)
	layer, _ := layerOf(t, img)
	tmp := filepath.Join(env.dir, "tmp")
	if err := os.RemoveAll(tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tmp, nil, 0o644); err != nil { // a file where the folder was
		t.Fatal(err)
	}
	// Each answer is a 5xx of the storage's, or a transfer that breaks
	// (the first bytes went out before the copy failed).
	answers := map[string]int{}
	for range 30 {
		resp, err := http.Get(env.srv.URL + "/v2/docker.io/library/app/blobs/" + layer)
		if err != nil {
			// Headers written but still buffered when the copy failed
			// must go out before the transfer breaks
			// (TestMirrorSmallBlobStalledMidBody).
			t.Errorf("cold GET with the fill's local copy failing: no answer at all: %v", err)
			continue
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch {
		case resp.StatusCode == http.StatusOK && err != nil:
			answers["200, transfer broken"]++
		case resp.StatusCode == http.StatusBadGateway:
			t.Errorf("cold GET with the fill's local copy failing: 502 %s", body)
		case resp.StatusCode/100 != 5:
			t.Errorf("cold GET with the fill's local copy failing: %s, %d bytes, %v", resp.Status, len(body), err)
		default:
			answers[resp.Status]++
		}
	}
	t.Logf("answers: %v", answers)
}
