//go:build linux

package e2e

import (
	"bytes"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestRestartOnReadOnlyDisk: the single node restarted while the
// filesystem of its storage is read-only (the kernel remounted it after
// disk errors; the service manager restarted the process). It starts and
// stays up. With its metadata on another disk, pulls are served; with
// the metadata in the read-only folder (the default), which the database
// cannot open there, pulls of that store answer 503 with Retry-After; with
// a sub_storage on that disk, only its repositories do and the others
// are pulled and pushed as usual. Pushes to the read-only store get 503
// with Retry-After. Once the filesystem is writable again the same
// process serves and takes everything. Before, the process exited at
// start when the database could not open ("Cannot write pid file ...
// read-only file system"), so nothing was served at all.
func TestRestartOnReadOnlyDisk(t *testing.T) {
	needBinary(t)
	for _, tc := range []struct {
		name      string
		metaApart bool // the read-only store's metadata on a writable disk
		sub       bool // the read-only store is a sub_storage's, team
	}{
		{"metadata apart", true, false},
		{"metadata inside", false, false},
		{"sub-path", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			disk := tmpfs.Mount(t, 64<<20)
			roDir := filepath.Join(disk, "data")
			site := "\toci_registry {\n\t\tstorage " + strconv.Quote(roDir) + "\n\t\tstorage_reserve 1MiB\n"
			repo, other := "team/app", ""
			if tc.metaApart {
				site += "\t\tmetadata_dir " + strconv.Quote(filepath.Join(t.TempDir(), "meta")) + "\n"
			}
			if tc.sub {
				site = "\toci_registry {\n\t\tstorage " + strconv.Quote(filepath.Join(t.TempDir(), "main")) + "\n\t\tstorage_reserve 1MiB\n" +
					"\t\tsub_storage team {\n\t\t\tstorage " + strconv.Quote(roDir) + "\n\t\t}\n"
				other = "other/app"
			}
			s := siteServer(t, roDir, site+"\t}", 0)
			before := randomBytes(t, 1<<20)
			d := pushBlob(t, s, repo, before)
			var otherD string
			if other != "" {
				otherD = pushBlob(t, s, other, before[:4096])
			}
			s.kill()
			remount(t, disk, 64<<20, true)
			defer remount(t, disk, 64<<20, false)
			if !tc.metaApart && !tc.sub {
				s.readyStatus = http.StatusServiceUnavailable // its only store
			}
			s.start()

			pull := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil)
			switch {
			case tc.metaApart:
				if pull.StatusCode != http.StatusOK || !bytes.Equal(readAll(t, pull), before) {
					t.Errorf("pull on the read-only disk: %s, want 200 with the blob", pull.Status)
				}
			default:
				wantUnavailable(t, pull, "pull on the read-only disk, its metadata there")
			}
			x := randomBytes(t, 4096)
			wantUnavailable(t, do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(x)), x, nil), "push to the read-only disk")
			if other != "" {
				if got := do(t, http.MethodGet, s.url("/v2/"+other+"/blobs/"+otherD), nil, nil); got.StatusCode != http.StatusOK {
					t.Errorf("pull from the writable store beside the read-only one: %s", got.Status)
				}
				pushBlob(t, s, other, x)
			}
			fds := fdCount(t, s)
			for range 100 {
				status(http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d))
			}
			if n := fdCount(t, s); n > fds+8 {
				t.Errorf("100 pulls on the read-only disk left the server with %d files, %d before", n, fds)
			}
			s.alive("on the read-only disk")

			remount(t, disk, 64<<20, false)
			if got := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil); got.StatusCode != http.StatusOK || !bytes.Equal(readAll(t, got), before) {
				t.Errorf("pull once the disk is writable: %s", got.Status)
			}
			if resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(x)), x, nil); resp.StatusCode != http.StatusCreated {
				t.Errorf("push once the disk is writable: %s %s", resp.Status, readAll(t, resp))
			}
			s.alive("once the disk is writable")
		})
	}
}
