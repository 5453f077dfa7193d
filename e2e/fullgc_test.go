//go:build linux

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestFullDiskGCAndFill: the single node's one filesystem (blobs and
// badger) filled to the last byte while GC runs every second with
// orphans to sweep, and five clients pull the same cold 12 MiB mirrored
// blob at once. Each client gets 507 STORAGE_FULL or a cut (or the whole
// blob), never a 500 nor other bytes; the process lives; the image pushed
// before is pulled whole throughout; nothing of the blob is left; and
// once space is freed, GC sweeps the orphans, the blob fills and serves
// whole, and pushes work, without a restart.
func TestFullDiskGCAndFill(t *testing.T) {
	needBinary(t)
	fs := tmpfs.Mount(t, 64*diskMiB)
	dataDir := filepath.Join(fs, "data")
	blob := randomBytes(t, 12*diskMiB)
	d := blobDigest(blob)
	up := fillUpstream(t, blob)
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		storage_reserve 4MiB
		gc_interval 1s
		gc_grace 2s
		mirror docker.io {
			upstream %s
		}
	}`, strconv.Quote(dataDir), up.URL), 0)
	crane := tool(t, "crane")
	kept := pushImage(t, crane, s, "gc/app:kept")
	var orphans []string
	for i := range 8 {
		orphans = append(orphans, pushBlob(t, s, fmt.Sprintf("gc/orphan%d", i), randomBytes(t, diskMiB)))
	}

	filler := tmpfs.FillTo(t, fs, 128<<10) // all but a few pages
	for _, repo := range []string{"library/sized", "library/chunked"} {
		got := coldReaders(t, []*server{s}, "/v2/docker.io/"+repo+"/blobs/"+d, d, 5)
		t.Logf("%s with the disk full: %v", repo, got)
		if got["200 whole"] > 0 {
			t.Errorf("%s: the whole blob with no room to fill it", repo)
		}
	}
	time.Sleep(4 * time.Second) // GC passes on the full disk
	s.alive("with GC and fills on a full disk")
	pullAndVerify(t, kept.ref, kept.digest)
	if f := findFile(dataDir, strings.TrimPrefix(d, "sha256:")); f != "" {
		t.Errorf("the failed fill left %s", f)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "GC to sweep the orphans once space is freed", func() bool {
		for _, o := range orphans {
			if findFile(dataDir, strings.TrimPrefix(o, "sha256:")) != "" {
				return false
			}
		}
		return true
	})
	for i, o := range orphans {
		headBlob(t, s, fmt.Sprintf("gc/orphan%d", i), o, http.StatusNotFound, "after GC swept it")
	}
	for _, repo := range []string{"library/sized", "library/chunked"} {
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/"+repo+"/blobs/"+d), nil, nil)
		if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != d {
			t.Errorf("%s after freeing space: %s, %d bytes", repo, resp.Status, len(b))
		}
	}
	after := pushImage(t, crane, s, "gc/app:after")
	pullAndVerify(t, kept.ref, kept.digest)
	pullAndVerify(t, after.ref, after.digest)
	s.alive("after freeing space")
}
