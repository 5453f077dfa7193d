//go:build linux

package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestS3EmbeddedMetadataDiskFull: one node on S3 keeps its metadata in
// metadata_dir, on a filesystem another program fills to the last byte.
// There is no storage_reserve on S3, yet the database writes through
// memory maps (a page the filesystem cannot give is a SIGBUS): pushes
// must get 507 STORAGE_FULL while pulls go on and the process lives, a
// restart on the full disk must start and answer 503 rather than die, and
// once space is freed everything works again without another restart.
func TestS3EmbeddedMetadataDiskFull(t *testing.T) {
	srv, bucket := s3Bucket(t)
	fs := tmpfs.Mount(t, 160*diskMiB)
	s := siteServer(t, "", s3EmbeddedSite(srv, bucket, filepath.Join(fs, "meta"), ""), 0)
	host := s.localhostAddr()
	img := ociImage(t)
	writeImage(t, host+"/team/app:v1", img)
	d, _ := img.Digest()

	filler := tmpfs.FillTo(t, fs, 0)
	for i := range 5 {
		other := ociImage(t)
		ref, _ := name.ParseReference(host+"/team/other:v1", name.Insecure)
		if err := remote.Write(ref, other); err == nil {
			t.Fatalf("push %d with the metadata disk full succeeded", i)
		}
		s.alive("after a push on a full metadata disk")
	}
	x := []byte("x")
	refusedFull(t, do(t, http.MethodPost, s.url("/v2/team/other/blobs/uploads/?digest="+blobDigest(x)), x, nil),
		"blob push on a full metadata disk")
	refusedFull(t, do(t, http.MethodPost, s.url("/v2/team/other/blobs/uploads/"), nil, nil),
		"upload session on a full metadata disk")
	pullAndVerify(t, host+"/team/app:v1", d.String())
	s.alive("on a full metadata disk")

	s.kill()
	s.readyStatus = http.StatusServiceUnavailable
	s.start()
	resp := do(t, http.MethodGet, s.url("/v2/team/app/manifests/v1"), nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("pull after a restart on the full disk: %s, Retry-After %q; want 503 with Retry-After",
			resp.Status, resp.Header.Get("Retry-After"))
	}
	time.Sleep(time.Second)
	s.alive("restarted on a full metadata disk")

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pullAndVerify(t, host+"/team/app:v1", d.String())
	other := ociImage(t)
	ref2, _ := name.ParseReference(host+"/team/other:v1", name.Insecure)
	if err := remote.Write(ref2, other); err != nil {
		t.Fatalf("push after space came back: %v", err)
	}
	od, _ := other.Digest()
	pullAndVerify(t, host+"/team/other:v1", od.String())
	s.alive("after space came back")
}
