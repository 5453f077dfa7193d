package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaFileDescriptorExhaustion runs a replica (versitygw bucket,
// PostgreSQL) with a limit of 128 open files and without the listener's
// reserve, fills it with idle connections until it has none left, and
// makes its connections to PostgreSQL and S3 end (backends terminated,
// versitygw restarted), so that every request needs a new one it cannot
// open. Requests on connections accepted before get 503 UNAVAILABLE with
// Retry-After (or succeed), never a 500; once the idle connections close,
// the same process pushes and pulls again, and everything acknowledged is
// there.
func TestReplicaFileDescriptorExhaustion(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	const limit = 128
	srv, pg := s3test.Start(t), pgtest.Start(t)
	bucket := replicaEnv(t, srv, pg)
	s := limitedServer(t, limit, false, "", replicaSite(srv, bucket, "", "")+"\n")
	before := fdCount(t, s)

	im := newChurnImage(t)
	if !im.pushBlobs(s, "fd/app") || !im.putManifest(s, "fd/app", "v1") {
		t.Fatalf("pushing the first image failed: %v", churnSample.Load())
	}
	chunked := randomBytes(t, 256<<10)
	half := len(chunked) / 2
	resp := do(t, http.MethodPost, s.url("/v2/fd/app/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}
	resp = do(t, http.MethodPatch, location(t, s, resp).String(), chunked[:half],
		map[string]string{"Content-Range": fmt.Sprintf("0-%d", half-1), "Content-Type": "application/octet-stream"})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PATCH first chunk: %s", resp.Status)
	}
	session := location(t, s, resp).String()

	clients := acceptedClients(t, s, 8, 60*time.Second)
	idle := exhaustFiles(t, s, limit)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	// Its connections to the backends end: it needs new ones.
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'caddy-oci'`); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	srv.Restart(t)
	// The server's descriptors of those connections close as it notices:
	// fill what they free.
	for range 20 {
		if c, err := net.DialTimeout("tcp", s.addr, time.Second); err == nil {
			idle = append(idle, c)
		}
	}
	time.Sleep(200 * time.Millisecond)

	layer := randomBytes(t, 64<<10)
	im2 := newChurnImage(t)
	for i, rq := range []struct {
		method, path string
		body         []byte
		hdr          map[string]string
	}{
		{http.MethodGet, s.url("/v2/fd/app/manifests/v1"), nil, map[string]string{"Accept": ociManifest}},
		{http.MethodGet, s.url("/v2/fd/app/blobs/" + blobDigest(im.layer)), nil, nil},
		{http.MethodPost, s.url("/v2/fd/app/blobs/uploads/?digest=" + blobDigest(layer)), layer, nil},
		{http.MethodPatch, session, chunked[half:], map[string]string{"Content-Range": fmt.Sprintf("%d-%d", half, len(chunked)-1), "Content-Type": "application/octet-stream"}},
		{http.MethodPut, s.url("/v2/fd/app/manifests/again"), im.manifest, map[string]string{"Content-Type": ociManifest}},
		{http.MethodGet, s.url("/v2/fd/app/tags/list"), nil, nil},
		{http.MethodPost, s.url("/v2/fd/app/blobs/uploads/"), nil, nil},
		{http.MethodDelete, s.url("/v2/fd/app/manifests/" + im2.digest), nil, nil},
	} {
		req, _ := http.NewRequest(rq.method, rq.path, bytes.NewReader(rq.body))
		for k, v := range rq.hdr {
			req.Header.Set(k, v)
		}
		resp, err := clients[i].Do(req)
		if err != nil {
			t.Errorf("%s %s with no file left: %v", rq.method, rq.path, err)
			continue
		}
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Logf("%s %s with no file left: %s", rq.method, rq.path, resp.Status)
		switch {
		case rerr != nil && resp.StatusCode == http.StatusOK:
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" &&
			bytes.Contains(b, []byte("UNAVAILABLE")):
		case resp.StatusCode < 500:
		default:
			t.Errorf("%s %s with no file left: %s %s (want 503 UNAVAILABLE with Retry-After)", rq.method, rq.path, resp.Status, b)
		}
	}
	time.Sleep(200 * time.Millisecond) // a fatal error takes its time
	s.alive("with no file left")

	for _, c := range idle {
		c.Close()
	}
	idle = nil
	deadline := time.Now().Add(30 * time.Second)
	for fdCount(t, s) > before+16 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("files: %d before, %d at the limit, %d after the connections closed", before, limit, fdCount(t, s))

	// Works again without a restart.
	waitFor(t, 30*time.Second, "a push after the connections closed", func() bool {
		return im2.pushBlobs(s, "fd/app") && im2.putManifest(s, "fd/app", "v2")
	})
	checkImage(t, s, "fd/app", "v1", "after the limit")
	checkImage(t, s, "fd/app", "v2", "after the limit")
	resp = do(t, http.MethodGet, session, nil, nil)
	var end int
	if _, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &end); resp.StatusCode != http.StatusNoContent || err != nil || (end+1 != half && end+1 != len(chunked)) {
		t.Fatalf("upload status after the limit: %s, Range %q (want 0-%d or 0-%d)", resp.Status, resp.Header.Get("Range"), half-1, len(chunked)-1)
	}
}
