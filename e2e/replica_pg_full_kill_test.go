//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3/s3test"
	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
	"github.com/caddy-oci/caddy-oci/pgmeta/pgtest"
)

// TestReplicaPostgresFullKillForgets: pushes into a replica whose
// PostgreSQL is full (its data folder a 256 MiB tmpfs filled to the brim)
// are refused 507, each after its bytes reached the bucket; the replica
// remembers those in memory to record them later, and is killed (-9)
// before the database takes records again. Once space is freed and the
// replica is back, the objects nothing records are collected after the
// grace period (GC lists the bucket's blobs); the image pushed before,
// which a tag references, is untouched.
func TestReplicaPostgresFullKillForgets(t *testing.T) {
	needBinary(t)
	dir := tmpfs.Mount(t, 256<<20)
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil { // PostgreSQL's own user reaches it
			t.Fatal(err)
		}
	}
	srv := s3test.Start(t)
	c := startClusterOn(t, srv, pgtest.StartIn(t, dir), 1, "\t\tgc_interval 1s\n\t\tgc_grace 3s\n", nil)
	r := c.replicas[0]
	img := ociImage(t)
	md, _ := img.Digest()
	writeImage(t, r.addr+"/pgkill/app:v1", img)
	before, _ := srv.Keys(t, c.bucket, "registry/blobs/")

	filler := tmpfs.FillTo(t, dir, 0)
	var refusedKeys []string
	for i := 0; i < 5000 && len(refusedKeys) < 5; i++ {
		b := []byte(fmt.Sprintf("blob %d of a full database %s", i, strings.Repeat("x", 200)))
		d := blobDigest(b)
		resp := do(t, http.MethodPost, r.url(fmt.Sprintf("/v2/pgkill/r%d/blobs/uploads/?digest=%s", i, d)), b,
			map[string]string{"Content-Type": "application/octet-stream"})
		readAll(t, resp)
		if resp.StatusCode == http.StatusCreated {
			continue
		}
		if resp.StatusCode != http.StatusInsufficientStorage {
			t.Fatalf("push into a full database: %s, want 201 or 507", resp.Status)
		}
		h := strings.TrimPrefix(d, "sha256:")
		refusedKeys = append(refusedKeys, "registry/blobs/sha256/"+h[:2]+"/"+h)
	}
	if len(refusedKeys) == 0 {
		t.Fatal("5000 pushes into a full database all succeeded")
	}
	objects, _ := srv.Keys(t, c.bucket, "registry/blobs/")
	var left []string
	for _, k := range refusedKeys {
		if slices.Contains(objects, k) {
			left = append(left, k)
		}
	}
	t.Logf("%d pushes refused, %d of them left their bytes in the bucket", len(refusedKeys), len(left))
	if len(left) == 0 {
		t.Skip("no refused push left bytes behind: nothing to collect")
	}
	r.kill()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	r.start()
	waitFor(t, 40*time.Second, "the refused pushes' bytes collected", func() bool {
		objects, _ := srv.Keys(t, c.bucket, "registry/blobs/")
		for _, k := range left {
			if slices.Contains(objects, k) {
				return false
			}
		}
		return true
	})
	objects, _ = srv.Keys(t, c.bucket, "registry/blobs/")
	for _, k := range before {
		if !slices.Contains(objects, k) {
			t.Errorf("GC removed %s, which the tagged image references", k)
		}
	}
	pullAndVerify(t, r.addr+"/pgkill/app:v1", md.String())
	r.alive("after GC")
}
