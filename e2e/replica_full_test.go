//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaS3Full: the S3 server's filesystem (versitygw's posix folder
// on a 64 MiB tmpfs) filled to the brim under a replica. A monolithic
// push that fits one S3 PUT, one that streams and a chunked push each
// get 507 STORAGE_FULL, the spec-style error of a
// full storage, not 503 "retry in 5s" (a retry cannot help until the
// operator frees space); nothing of them is visible in the registry or
// the bucket; blobs pushed before are still served; and once space is
// freed the same pushes succeed on the same process.
func TestReplicaS3Full(t *testing.T) {
	needBinary(t)
	dir := tmpfs.Mount(t, 64<<20)
	srv := s3test.StartIn(t, dir)

	up := newUpstream(t)
	c := startClusterOn(t, srv, pgtest.Start(t), 1, `		mirror docker.io {
			upstream `+up.URL+`
		}`, nil)
	r := c.replicas[0]

	before := randomBytes(t, 256<<10)
	beforeDigest := pushBlob(t, r, "full/app", before)

	filler := tmpfs.FillTo(t, dir, 512<<10)

	small := randomBytes(t, 2<<20)    // one buffered PUT
	big := randomBytes(t, 12<<20)     // a streamed PUT (above the 8 MiB part)
	chunked := randomBytes(t, 12<<20) // a session: tail objects, parts
	for _, b := range []struct {
		what string
		data []byte
	}{{"small monolithic push", small}, {"big monolithic push", big}} {
		resp := do(t, http.MethodPost, r.url("/v2/full/app/blobs/uploads/?digest="+blobDigest(b.data)), b.data,
			map[string]string{"Content-Type": "application/octet-stream"})
		refusedFull(t, resp, b.what)
	}
	refused := chunkedPush(t, r, "full/app", chunked, 4<<20)
	session := refused.Header.Get("X-Test-Location")
	refusedFull(t, refused, "chunked push")

	layer := upstreamBlob(t, up, "library/cold", randomBytes(t, 4<<20))
	// A cold miss is passed through from upstream as it streams (the
	// bucket cannot refuse before the first byte, as a full folder
	// does), or refused; either way nothing lands.
	resp := do(t, http.MethodGet, r.url("/v2/docker.io/library/cold/blobs/"+layer), nil, nil)
	if resp.StatusCode != http.StatusOK {
		refusedFull(t, resp, "mirror cold miss")
	} else if got := readAll(t, resp); blobDigest(got) != layer {
		t.Fatalf("mirror cold miss with the bucket full: 200 with %d bytes hashing to %s, want %s", len(got), blobDigest(got), layer)
	}

	// Nothing half-visible: not in the registry, not in the bucket (a
	// mirror's HEAD asks upstream, so only the bucket tells of its fill).
	for _, d := range []string{blobDigest(small), blobDigest(big), blobDigest(chunked), layer} {
		if d != layer {
			headBlob(t, r, "full/app", d, http.StatusNotFound, "after the refused push")
		}
		hex := strings.TrimPrefix(d, "sha256:")
		if objects, _ := srv.Keys(t, c.bucket, "registry/blobs/sha256/"+hex[:2]+"/"+hex); len(objects) != 0 {
			t.Errorf("refused blob %s is in the bucket: %v", d, objects)
		}
	}
	resp = do(t, http.MethodGet, r.url("/v2/full/app/blobs/"+beforeDigest), nil, nil)
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, before) {
		t.Fatalf("blob pushed before the disk filled: %s, %d bytes", resp.Status, len(got))
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pushBlob(t, r, "full/app", small)
	pushBlob(t, r, "full/app", big)
	// The refused session resumes where its Range says.
	resp = do(t, http.MethodGet, session, nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("the refused push's session after space was freed: %s %s", resp.Status, readAll(t, resp))
	}
	at := 0 // "0-0" is an empty session (as the reference registry writes it): chunks here are 4 MiB
	if rg := resp.Header.Get("Range"); rg != "" && rg != "0-0" {
		var last int
		if _, err := fmt.Sscanf(rg, "0-%d", &last); err != nil {
			t.Fatalf("session Range %q", rg)
		}
		at = last + 1
	}
	t.Logf("the refused session resumes at %d of %d bytes", at, len(chunked))
	if resp := resumePush(t, r, session, at, chunked, 4<<20); resp.StatusCode != http.StatusCreated {
		t.Fatalf("chunked push resumed after space was freed: %s %s", resp.Status, readAll(t, resp))
	}
	for _, b := range [][]byte{small, big, chunked} {
		resp := do(t, http.MethodGet, r.url("/v2/full/app/blobs/"+blobDigest(b)), nil, nil)
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
			t.Fatalf("blob pushed after space was freed: %s, %d bytes", resp.Status, len(got))
		}
	}
	resp = do(t, http.MethodGet, r.url("/v2/docker.io/library/cold/blobs/"+layer), nil, nil)
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(got) != layer {
		t.Fatalf("mirror blob after space was freed: %s", resp.Status)
	}
	r.alive("after the S3 server's disk filled")
}

// chunkedPush pushes b in PATCHes of chunk bytes and a closing PUT,
// stopping at the first answer that is not the expected one, which it
// returns; on success it returns the PUT's 201.
func chunkedPush(t *testing.T, s *server, repo string, b []byte, chunk int) *http.Response {
	t.Helper()
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		return resp
	}
	return resumePush(t, s, location(t, s, resp).String(), 0, b, chunk)
}

// resumePush sends b from offset off on the upload session at loc, as
// chunkedPush does.
func resumePush(t *testing.T, s *server, loc string, off int, b []byte, chunk int) *http.Response {
	t.Helper()
	for ; off < len(b); off += chunk {
		end := min(off+chunk, len(b))
		resp := do(t, http.MethodPatch, loc, b[off:end], map[string]string{
			"Content-Type":  "application/octet-stream",
			"Content-Range": fmt.Sprintf("%d-%d", off, end-1),
		})
		if resp.StatusCode != http.StatusAccepted {
			resp.Header.Set("X-Test-Location", loc)
			return resp
		}
		loc = location(t, s, resp).String()
	}
	u, err := url.Parse(loc)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("digest", blobDigest(b))
	u.RawQuery = q.Encode()
	resp := do(t, http.MethodPut, u.String(), nil, nil)
	resp.Header.Set("X-Test-Location", loc)
	return resp
}

// upstreamBlob pushes blob b into repo on upstream u and returns its
// digest.
func upstreamBlob(t *testing.T, u *upstream, repo string, b []byte) string {
	t.Helper()
	d := blobDigest(b)
	resp := do(t, http.MethodPost, u.URL+"/v2/"+repo+"/blobs/uploads/?digest="+d, b,
		map[string]string{"Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("upstream push: %s", resp.Status)
	}
	return d
}

// TestReplicaPostgresFull: PostgreSQL's data folder (on a 256 MiB tmpfs)
// filled to the brim under a replica whose blobs go to S3 elsewhere.
// Pushes go on until PostgreSQL cannot grow a table; that push, and
// every later one, is refused with 507 STORAGE_FULL (PostgreSQL's
// disk_full, not an outage: 503 would have clients retry in vain);
// what was pushed before is still pulled; and once space is freed the
// same process takes pushes again.
func TestReplicaPostgresFull(t *testing.T) {
	crane := tool(t, "crane")
	dir := tmpfs.Mount(t, 256<<20)
	// PostgreSQL runs as its own user, who must reach the mount.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := startClusterOn(t, s3test.Start(t), pgtest.StartIn(t, dir), 1, "", nil)
	r := c.replicas[0]
	before := pushImage(t, crane, r, "pgfull/app:before")

	filler := tmpfs.FillTo(t, dir, 0)
	var refused *http.Response
	pushed := 0
	for i := 0; i < 5000 && refused == nil; i++ {
		b := []byte(fmt.Sprintf("blob %d of a full database %s", i, strings.Repeat("x", 200)))
		resp := do(t, http.MethodPost, r.url(fmt.Sprintf("/v2/pgfull/r%d/blobs/uploads/?digest=%s", i, blobDigest(b))), b,
			map[string]string{"Content-Type": "application/octet-stream"})
		if resp.StatusCode == http.StatusCreated {
			pushed++
			continue
		}
		refused = resp
	}
	if refused == nil {
		t.Fatalf("%d pushes into a full database all succeeded", pushed)
	}
	t.Logf("%d pushes succeeded before the database was full", pushed)
	refusedFull(t, refused, "push into a full database")
	// A session's row may still find room in a page of its table.
	if resp := do(t, http.MethodPost, r.url("/v2/pgfull/app/blobs/uploads/"), nil, nil); resp.StatusCode != http.StatusAccepted {
		refusedFull(t, resp, "upload start into a full database")
	}
	pullAndVerify(t, before.ref, before.digest)

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	after := pushImage(t, crane, r, "pgfull/app:after")
	pullAndVerify(t, after.ref, after.digest)
	r.alive("after PostgreSQL's disk filled")
}
