//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestFullMetadataDisk fills the filesystem of metadata_dir (badger's
// folder, apart from the blobs) to the last byte while the blobs'
// filesystem has room and GC runs every second: every change gets 507
// STORAGE_FULL, pulls go on, the process lives (badger would die of SIGBUS
// on its memory maps), and once space is freed pushes work again without
// a restart.
func TestFullMetadataDisk(t *testing.T) {
	needBinary(t)
	blobs := tmpfs.Mount(t, 64*diskMiB)
	meta := tmpfs.Mount(t, 48*diskMiB)
	dataDir, metaDir := filepath.Join(blobs, "data"), filepath.Join(meta, "meta")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tmetadata_dir %s\n\t\tstorage_reserve 8MiB\n\t\tgc_interval 1s\n\t\tgc_grace 1s\n\t\tupload_ttl 2s\n\t}",
		strconv.Quote(dataDir), strconv.Quote(metaDir)), 0)
	host := s.localhostAddr()

	img := ociImage(t)
	writeImage(t, host+"/team/app:v1", img)
	d, _ := img.Digest()
	raw, err := img.RawManifest()
	if err != nil {
		t.Fatal(err)
	}
	// Work for GC on the full disk: an old tag's manifest deleted, an
	// upload session left to expire.
	old := ociImage(t)
	oldRef, _ := name.ParseReference(host+"/team/old:v1", name.Insecure)
	if err := remote.Write(oldRef, old); err != nil {
		t.Fatal(err)
	}
	od, _ := old.Digest()
	if resp := do(t, http.MethodDelete, s.url("/v2/team/old/manifests/"+od.String()), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("DELETE: %s", resp.Status)
	}
	if resp := do(t, http.MethodPost, s.url("/v2/team/left/blobs/uploads/"), nil, nil); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST upload: %s", resp.Status)
	}

	filler := tmpfs.FillTo(t, meta, 0)
	t.Run("metadata filesystem full", func(t *testing.T) {
		blob := randomBytes(t, diskMiB)
		refusedFull(t, do(t, http.MethodPost, s.url("/v2/team/app/blobs/uploads/?digest="+blobDigest(blob)), blob, nil), "a blob push")
		refusedFull(t, do(t, http.MethodPost, s.url("/v2/team/app/blobs/uploads/"), nil, nil), "starting an upload")
		refusedFull(t, do(t, http.MethodPut, s.url("/v2/team/app/manifests/v2"), raw,
			map[string]string{"Content-Type": "application/vnd.oci.image.manifest.v1+json"}), "tagging")
		refusedFull(t, do(t, http.MethodDelete, s.url("/v2/team/app/manifests/v1"), nil, nil), "deleting a tag")
		pullAndVerify(t, host+"/team/app:v1", d.String())
		time.Sleep(4 * time.Second) // GC rounds, upload expiry, on the full disk
		s.alive("with GC running on a full metadata filesystem")
		pullAndVerify(t, host+"/team/app:v1", d.String())
		headBlob(t, s, "team/app", blobDigest(blob), http.StatusNotFound, "after the refused push")
	})
	os.Remove(filler)
	t.Run("after freeing space", func(t *testing.T) {
		img2 := ociImage(t)
		ref2, _ := name.ParseReference(host+"/team/app:v2", name.Insecure)
		if err := remote.Write(ref2, img2); err != nil {
			t.Fatalf("push after freeing space: %v", err)
		}
		d2, _ := img2.Digest()
		pullAndVerify(t, host+"/team/app:v2", d2.String())
		pullAndVerify(t, host+"/team/app:v1", d.String())
		s.alive("after freeing space")
	})
}
