//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// localDiskReplica starts one replica on a fresh bucket and database with
// TMPDIR (upload parts, mirror spools) on a 32 MiB tmpfs and a read cache
// of 1 GiB on a 16 MiB one (a cache larger than its disk, as an operator
// may set it), mirroring up.
func localDiskReplica(t *testing.T, up *upstream) (r *server, srv *s3test.Server, bucket, tmp, cacheDir string) {
	t.Helper()
	needBinary(t)
	tmp, cacheDir = tmpfs.Mount(t, 32<<20), tmpfs.Mount(t, 16<<20)
	srv = s3test.Start(t)
	bucket = srv.Bucket(t)
	t.Setenv("CADDY_OCI_TEST_S3_KEY", srv.AccessKey)
	t.Setenv("CADDY_OCI_TEST_S3_SECRET", srv.SecretKey)
	t.Setenv("CADDY_OCI_TEST_DATABASE_URL", pgtest.Start(t).NewDatabase(t))
	site := replicaSite(srv, bucket, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n",
		"\t\t\tcache "+cacheDir+"/copies 1GiB\n")
	r = siteServerEnv(t, freePort(t), "", site, 0, []string{"TMPDIR=" + tmp})
	return r, srv, bucket, tmp, cacheDir
}

// cachedCopy says whether the read cache under dir holds a copy of d.
func cachedCopy(dir, d string) bool {
	return findFile(dir, strings.TrimPrefix(d, "sha256:")) != ""
}

// notInBucket fails the test if blob d is in the bucket.
func notInBucket(t *testing.T, srv *s3test.Server, bucket, d, what string) {
	t.Helper()
	hex := strings.TrimPrefix(d, "sha256:")
	if objects, _ := srv.Keys(t, bucket, "registry/blobs/sha256/"+hex[:2]+"/"+hex); len(objects) != 0 {
		t.Errorf("%s: blob %s is in the bucket: %v", what, d, objects)
	}
}

// TestReplicaLocalDiskFull: a replica's own disks, its temporary folder
// (parts of chunked pushes, mirror spools) and its read cache, filled to
// the last byte while S3 and PostgreSQL have room. Pulls go on (cached
// copies from the cache, the rest from the bucket, whole); a push that
// needs the temporary folder is refused with 507 and leaves nothing
// visible; a mirror's cold blob is passed through or refused, never cut;
// and once space is freed the same process takes the refused pushes
// (the chunked session resumes) and fills its cache again.
func TestReplicaLocalDiskFull(t *testing.T) {
	up := newUpstream(t)
	r, srv, bucket, tmp, cacheDir := localDiskReplica(t, up)

	before := randomBytes(t, 2<<20)
	beforeDigest := pushBlob(t, r, "local/app", before)
	getBlob(t, r, "local/app", beforeDigest, before)
	if !cachedCopy(cacheDir, beforeDigest) {
		t.Fatal("a whole read left no copy in the read cache")
	}
	tmpFiller, cacheFiller := tmpfs.FillTo(t, tmp, 0), tmpfs.FillTo(t, cacheDir, 0)

	getBlob(t, r, "local/app", beforeDigest, before) // the cached copy
	small := randomBytes(t, 2<<20)
	resp := do(t, http.MethodPost, r.url("/v2/local/app/blobs/uploads/?digest="+blobDigest(small)), small,
		map[string]string{"Content-Type": "application/octet-stream"})
	t.Logf("monolithic push with the local disks full: %s", resp.Status)
	if resp.StatusCode == http.StatusCreated {
		for range 2 { // read whole twice: no room for a copy, served all the same
			getBlob(t, r, "local/app", blobDigest(small), small)
		}
		if cachedCopy(cacheDir, blobDigest(small)) {
			t.Error("a copy was kept on a full cache disk")
		}
	} else {
		refusedFull(t, resp, "monolithic push with the local disks full")
	}

	chunked := randomBytes(t, 12<<20)
	refused := chunkedPush(t, r, "local/app", chunked, 4<<20)
	session := refused.Header.Get("X-Test-Location")
	t.Logf("chunked push with the temporary folder full: %s", refused.Status)
	refusedFull(t, refused, "chunked push with the temporary folder full")
	headBlob(t, r, "local/app", blobDigest(chunked), http.StatusNotFound, "after the refused chunked push")
	notInBucket(t, srv, bucket, blobDigest(chunked), "refused chunked push")

	layer := upstreamBlob(t, up, "library/cold", randomBytes(t, 4<<20))
	resp = do(t, http.MethodGet, r.url("/v2/docker.io/library/cold/blobs/"+layer), nil, nil)
	t.Logf("mirror cold miss with the temporary folder full: %s", resp.Status)
	if resp.StatusCode == http.StatusOK {
		if got := readAll(t, resp); blobDigest(got) != layer {
			t.Fatalf("mirror cold miss: 200 with %d bytes hashing to %s", len(got), blobDigest(got))
		}
	} else if resp.StatusCode != http.StatusInsufficientStorage &&
		!(resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "") {
		t.Fatalf("mirror cold miss with the temporary folder full: %s %s; want 200, 507, or 503 with Retry-After", resp.Status, readAll(t, resp))
	}
	r.alive("with its local disks full")

	for _, f := range []string{tmpFiller, cacheFiller} {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	at := sessionOffset(t, session)
	if resp := resumePush(t, r, session, at, chunked, 4<<20); resp.StatusCode != http.StatusCreated {
		t.Fatalf("chunked push resumed at %d after space was freed: %s %s", at, resp.Status, readAll(t, resp))
	}
	t.Logf("the refused session resumed at %d of %d bytes", at, len(chunked))
	getBlob(t, r, "local/app", blobDigest(chunked), chunked)
	if !cachedCopy(cacheDir, blobDigest(chunked)) {
		t.Error("no copy kept in the read cache once space was freed")
	}
	resp = do(t, http.MethodGet, r.url("/v2/docker.io/library/cold/blobs/"+layer), nil, nil)
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(got) != layer {
		t.Fatalf("mirror blob after space was freed: %s", resp.Status)
	}
	r.alive("after its local disks were freed")
}

// sessionOffset is where the upload session at loc stands (GET's Range).
func sessionOffset(t *testing.T, loc string) int {
	t.Helper()
	resp := do(t, http.MethodGet, loc, nil, nil)
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("upload session %s: %s %s", loc, resp.Status, readAll(t, resp))
	}
	rg := resp.Header.Get("Range")
	if rg == "" || rg == "0-0" {
		return 0 // the drills' chunks are MiBs: "0-0" is an empty session
	}
	var last int
	if _, err := fmt.Sscanf(rg, "0-%d", &last); err != nil {
		t.Fatalf("session Range %q", rg)
	}
	return last + 1
}

// remount makes the tmpfs at dir (of size bytes) read-only or writable
// again, as the kernel remounts a filesystem read-only after errors.
func remount(t *testing.T, dir string, size int64, readOnly bool) {
	t.Helper()
	flags := uintptr(syscall.MS_REMOUNT)
	if readOnly {
		flags |= syscall.MS_RDONLY
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", flags, fmt.Sprintf("size=%d", size)); err != nil {
		t.Fatalf("remount %s (read-only %v): %v", dir, readOnly, err)
	}
}

// TestReplicaLocalDiskReadOnly: a replica's temporary folder and read
// cache remounted read-only under it (as the kernel does after disk
// errors). Pulls go on from the bucket, whole; a chunked push is refused
// with 503 and Retry-After (the replica cannot take it; another may, or
// this one once its disk is back), never a 500; nothing refused is
// visible; once the disks are writable the session resumes and the cache
// fills again, without a restart.
func TestReplicaLocalDiskReadOnly(t *testing.T) {
	up := newUpstream(t)
	r, srv, bucket, tmp, cacheDir := localDiskReplica(t, up)
	blob := randomBytes(t, 2<<20)
	d := pushBlob(t, r, "ro/app", blob)

	remount(t, tmp, 32<<20, true)
	remount(t, cacheDir, 16<<20, true)
	writable := false
	defer func() {
		if !writable {
			remount(t, tmp, 32<<20, false)
			remount(t, cacheDir, 16<<20, false)
		}
	}()
	for range 2 {
		getBlob(t, r, "ro/app", d, blob)
	}
	if cachedCopy(cacheDir, d) {
		t.Fatal("a copy in a read-only cache")
	}
	chunked := randomBytes(t, 12<<20)
	refused := chunkedPush(t, r, "ro/app", chunked, 4<<20)
	session := refused.Header.Get("X-Test-Location")
	t.Logf("chunked push with the temporary folder read-only: %s %s", refused.Status, bytes.TrimSpace(readAll(t, refused)))
	if refused.StatusCode != http.StatusServiceUnavailable || refused.Header.Get("Retry-After") == "" {
		t.Errorf("chunked push with the temporary folder read-only: %s; want 503 with Retry-After", refused.Status)
	}
	headBlob(t, r, "ro/app", blobDigest(chunked), http.StatusNotFound, "after the refused chunked push")
	notInBucket(t, srv, bucket, blobDigest(chunked), "refused chunked push")
	layer := upstreamBlob(t, up, "library/ro", randomBytes(t, 4<<20))
	resp := do(t, http.MethodGet, r.url("/v2/docker.io/library/ro/blobs/"+layer), nil, nil)
	t.Logf("mirror cold miss with the temporary folder read-only: %s", resp.Status)
	if resp.StatusCode == http.StatusOK {
		if got := readAll(t, resp); blobDigest(got) != layer {
			t.Fatalf("mirror cold miss: 200 with %d bytes hashing to %s", len(got), blobDigest(got))
		}
	} else if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("mirror cold miss with the temporary folder read-only: %s %s; want 200, or 503 with Retry-After", resp.Status, readAll(t, resp))
	}

	remount(t, tmp, 32<<20, false)
	remount(t, cacheDir, 16<<20, false)
	writable = true
	at := 0
	if session != "" {
		at = sessionOffset(t, session)
	}
	if session == "" {
		refused = chunkedPush(t, r, "ro/app", chunked, 4<<20)
	} else {
		refused = resumePush(t, r, session, at, chunked, 4<<20)
	}
	if refused.StatusCode != http.StatusCreated {
		t.Fatalf("chunked push once the disk is writable (from %d): %s %s", at, refused.Status, readAll(t, refused))
	}
	for range 2 {
		getBlob(t, r, "ro/app", d, blob)
	}
	if !cachedCopy(cacheDir, d) {
		t.Error("no copy kept in the read cache once it was writable")
	}
	r.alive("after its local disks were read-only")
}
