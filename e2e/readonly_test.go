//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestReadOnlyBlobDisk: the single node's blob folder remounted
// read-only under it (as the kernel does after disk errors), its
// metadata on another disk. Pulls go on; a push, monolithic or chunked,
// is refused with 503 and Retry-After (the storage cannot take it now;
// nothing the client did wrong), not 500 "internal error" as before; a
// mirror's cold fill is a broken transfer (below) or 503, never other
// bytes; nothing refused is visible; and once the disk is writable again
// the same process takes the pushes and fills.
func TestReadOnlyBlobDisk(t *testing.T) {
	needBinary(t)
	blobs, meta := tmpfs.Mount(t, 64<<20), tmpfs.Mount(t, 32<<20)
	dataDir, metaDir := filepath.Join(blobs, "data"), filepath.Join(meta, "meta")
	up := newUpstream(t)
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tmetadata_dir %s\n\t\tstorage_reserve 1MiB\n\t\tmirror docker.io {\n\t\t\tupstream %s\n\t\t}\n\t}",
		strconv.Quote(dataDir), strconv.Quote(metaDir), up.URL), 0)
	before := randomBytes(t, 1<<20)
	d := pushBlob(t, s, "ro/app", before)

	remount(t, blobs, 64<<20, true)
	writable := false
	defer func() {
		if !writable {
			remount(t, blobs, 64<<20, false)
		}
	}()
	getBlob(t, s, "ro/app", d, before)
	small := randomBytes(t, 256<<10)
	resp := do(t, http.MethodPost, s.url("/v2/ro/app/blobs/uploads/?digest="+blobDigest(small)), small,
		map[string]string{"Content-Type": "application/octet-stream"})
	wantRetry(t, resp, "monolithic push on a read-only disk")
	chunked := randomBytes(t, 3<<20)
	resp = chunkedPush(t, s, "ro/app", chunked, 1<<20)
	session := resp.Header.Get("X-Test-Location")
	wantRetry(t, resp, "chunked push on a read-only disk")
	layer := upstreamBlob(t, up, "library/ro", randomBytes(t, 2<<20))
	// A cold fill shares upstream's first bytes with its client before
	// its temporary file is made (to answer sooner), so a disk that
	// refuses the file breaks that transfer; never other bytes.
	if resp, err := http.Get(s.url("/v2/docker.io/library/ro/blobs/" + layer)); err != nil {
		t.Fatal(err)
	} else if got, err := io.ReadAll(resp.Body); err != nil {
		t.Logf("mirror cold fill on a read-only disk: %s, transfer broken after %d bytes (%v)", resp.Status, len(got), err)
	} else if resp.StatusCode == http.StatusOK && blobDigest(got) != layer {
		t.Errorf("mirror cold fill on a read-only disk: 200 with %d bytes hashing to %s", len(got), blobDigest(got))
	} else if resp.StatusCode != http.StatusOK {
		resp.Body = io.NopCloser(bytes.NewReader(got))
		wantRetry(t, resp, "mirror cold fill on a read-only disk")
	}
	for _, b := range [][]byte{small, chunked} {
		headBlob(t, s, "ro/app", blobDigest(b), http.StatusNotFound, "after the refused push")
	}
	s.alive("with its blob disk read-only")

	remount(t, blobs, 64<<20, false)
	writable = true
	pushBlob(t, s, "ro/app", small)
	if session != "" {
		if resp := resumePush(t, s, session, sessionOffset(t, session), chunked, 1<<20); resp.StatusCode != http.StatusCreated {
			t.Fatalf("chunked push resumed once the disk is writable: %s %s", resp.Status, readAll(t, resp))
		}
	} else if resp := chunkedPush(t, s, "ro/app", chunked, 1<<20); resp.StatusCode != http.StatusCreated {
		t.Fatalf("chunked push once the disk is writable: %s %s", resp.Status, readAll(t, resp))
	}
	getBlob(t, s, "ro/app", blobDigest(chunked), chunked)
	resp = do(t, http.MethodGet, s.url("/v2/docker.io/library/ro/blobs/"+layer), nil, nil)
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(got) != layer {
		t.Fatalf("mirror blob once the disk is writable: %s", resp.Status)
	}
	s.alive("after its blob disk was read-only")
}

// wantRetry checks a 503 with Retry-After.
func wantRetry(t *testing.T, resp *http.Response, what string) {
	t.Helper()
	body := readAll(t, resp)
	t.Logf("%s: %s %s", what, resp.Status, body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("%s: %s %s; want 503 with Retry-After", what, resp.Status, body)
	}
}
