//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaPostgresFullMirrorFill: PostgreSQL's data folder (a 256 MiB
// tmpfs) filled to the brim under two replicas whose blobs go to S3
// elsewhere, then clients on both pull one cold mirrored blob (with
// upstream's length and without) while another pushes a blob and a
// manifest. Each reader gets the blob whole (passed through from
// upstream), 507 STORAGE_FULL, 503 with Retry-After or a cut, never a 500;
// each push step 201 or 507 (nothing it refused visible afterwards); no
// fill lease held once the readers are done; no object of the blob left in
// the bucket that the database does not record (nothing would ever sweep
// it); and once space is freed, without a restart, both replicas fill and
// serve the blob whole and the push goes through.
func TestReplicaPostgresFullMirrorFill(t *testing.T) {
	needBinary(t)
	dir := tmpfs.Mount(t, 256<<20)
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil { // PostgreSQL's own user reaches it
			t.Fatal(err)
		}
	}
	srv := s3test.Start(t)
	blob := randomBytes(t, 12<<20)
	d := blobDigest(blob)
	up := fillUpstream(t, blob)
	c := startClusterOn(t, srv, pgtest.StartIn(t, dir), 2, `		mirror docker.io {
			upstream `+up.URL+`
		}`, nil)
	r := c.replicas[0]
	img := ociImage(t)
	layers, _ := img.Layers()
	cfgRaw, _ := img.RawConfigFile()
	manifest, _ := img.RawManifest()
	md, _ := img.Digest()

	// Full: the filler takes the free space, and pushes of small blobs
	// fill the pages PostgreSQL's tables had left.
	filler := tmpfs.FillTo(t, dir, 0)
	var refused *http.Response
	for i := 0; i < 5000 && refused == nil; i++ {
		b := []byte(fmt.Sprintf("blob %d of a full database %s", i, strings.Repeat("x", 200)))
		resp := do(t, http.MethodPost, r.url(fmt.Sprintf("/v2/pgfull/r%d/blobs/uploads/?digest=%s", i, blobDigest(b))), b,
			map[string]string{"Content-Type": "application/octet-stream"})
		if resp.StatusCode != http.StatusCreated {
			refused = resp
		}
	}
	if refused == nil {
		t.Fatal("5000 pushes into a full database all succeeded")
	}
	refusedFull(t, refused, "push into a full database")

	pushDone := make(chan []string, 1)
	go func() {
		// A push meanwhile, through the other replica: its layer, config
		// and manifest, each answered 201 or 507.
		var got []string
		for _, l := range layers {
			rc, _ := l.Compressed()
			b := make([]byte, 0, 1<<20)
			buf := make([]byte, 32<<10)
			for {
				n, err := rc.Read(buf)
				b = append(b, buf[:n]...)
				if err != nil {
					break
				}
			}
			rc.Close()
			got = append(got, pushStepStatus(c.replicas[1].url("/v2/pgfull/app/blobs/uploads/?digest="+blobDigest(b)), http.MethodPost, b, "application/octet-stream"))
		}
		got = append(got, pushStepStatus(c.replicas[1].url("/v2/pgfull/app/blobs/uploads/?digest="+blobDigest(cfgRaw)), http.MethodPost, cfgRaw, "application/octet-stream"))
		got = append(got, pushStepStatus(c.replicas[1].url("/v2/pgfull/app/manifests/v1"), http.MethodPut, manifest, "application/vnd.oci.image.manifest.v1+json"))
		pushDone <- got
	}()
	for _, repo := range []string{"library/sized", "library/chunked"} {
		path := "/v2/docker.io/" + repo + "/blobs/" + d
		got := coldReadersFull(t, c.replicas, path, d, 3)
		t.Logf("%s with the database full: %v", repo, got)
	}
	steps := <-pushDone
	t.Logf("push steps with the database full: %v", steps)
	refusedBlob := false
	for i, s := range steps {
		switch {
		case strings.HasPrefix(s, "201"):
		case strings.HasPrefix(s, "507") && strings.Contains(s, "STORAGE_FULL"):
			refusedBlob = refusedBlob || i < len(steps)-1
		case i == len(steps)-1 && refusedBlob && strings.HasPrefix(s, "400") && strings.Contains(s, "MANIFEST_BLOB_UNKNOWN"):
			// Its blobs were refused: the client's push is what failed.
		default:
			t.Errorf("push step with the database full: %s, want 201 or 507 STORAGE_FULL", s)
		}
	}
	if !strings.HasPrefix(steps[len(steps)-1], "201") {
		if resp := do(t, http.MethodGet, c.front.url("/v2/pgfull/app/manifests/v1"), nil, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("manifest refused 507 then read: %s", resp.Status)
		}
	}
	for _, r := range c.replicas {
		r.alive("after fills and pushes into a full database")
	}
	waitFor(t, 15*time.Second, "no fill lease held", func() bool {
		return pgCount(t, "SELECT count(*) FROM leases WHERE key = $1 AND expires > now()", "fill/"+d) == 0
	})
	recorded := pgCount(t, "SELECT count(*) FROM blobs WHERE digest = $1", d)
	objects, _ := srv.Keys(t, c.bucket, "registry/blobs/")
	t.Logf("with the database full: the mirrored blob recorded %d time(s); %d blob objects in the bucket", recorded, len(objects))
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	// Every blob object the refused writes left in the bucket is recorded
	// once the database takes records again (here after each replica's
	// first push that records), so GC can collect it: before any pull.
	for _, r := range c.replicas {
		pushBlob(t, r, "pgfull/other", randomBytes(t, 4096))
	}
	var unrecorded []string
	waitFor(t, 10*time.Second, "every blob object recorded", func() bool {
		unrecorded = unrecorded[:0]
		for _, o := range objects {
			h := o[strings.LastIndexByte(o, '/')+1:]
			if pgCount(t, "SELECT count(*) FROM blobs WHERE digest = $1", "sha256:"+h) == 0 {
				unrecorded = append(unrecorded, o)
			}
		}
		if len(unrecorded) > 0 {
			t.Logf("blob objects with no record: %v", unrecorded)
		}
		return len(unrecorded) == 0
	})
	for _, repo := range []string{"library/sized", "library/chunked"} {
		for i, r := range c.replicas {
			var status string
			waitFor(t, 20*time.Second, "the blob served after freeing space", func() bool {
				resp := do(t, http.MethodGet, r.url("/v2/docker.io/"+repo+"/blobs/"+d), nil, nil)
				b := readAll(t, resp)
				status = resp.Status
				return resp.StatusCode == http.StatusOK && blobDigest(b) == d
			})
			t.Logf("%s through replica %d after freeing space: %s", repo, i, status)
		}
	}
	for _, l := range layers {
		rc, _ := l.Compressed()
		rc.Close()
	}
	writeImage(t, c.front.addr+"/pgfull/app:v1", img)
	pullAndVerify(t, c.front.addr+"/pgfull/app:v1", md.String())
	for _, r := range c.replicas {
		r.alive("after freeing space")
	}
}

// pushStepStatus sends one push request and returns its status and error code.
func pushStepStatus(u, method string, body []byte, contentType string) string {
	req, err := http.NewRequest(method, u, strings.NewReader(string(body)))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", contentType)
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		return "no answer: " + err.Error()
	}
	defer resp.Body.Close()
	b := make([]byte, 512)
	n, _ := resp.Body.Read(b)
	return resp.Status + " " + string(b[:n])
}
