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

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestRestartWithOneFullSubPath: a storage sub-path's filesystem is
// filled to the last byte by another program and the registry is
// killed and started again. Only that sub-path's repositories wait for
// space (pulls 503 UNAVAILABLE with Retry-After, pushes 507
// STORAGE_FULL); the main storage's are pulled and pushed as before.
// Once the filler is deleted the same process opens the sub-path's
// store with the next request and serves what it held, without a
// restart. Before, the one full filesystem made the whole registry
// answer 503, /v2/ included. Either store may be the full one: the
// sub-path's, or the main storage's beside it.
func TestRestartWithOneFullSubPath(t *testing.T) {
	needBinary(t)
	for _, tc := range []struct {
		name       string
		mainOnDisk bool   // else the sub-path's folder is on the small filesystem
		full, room string // a repository in the full store and one in the other
	}{
		{"sub-path full", false, "team/app", "other/app"},
		{"main full", true, "other/app", "team/app"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := tmpfs.Mount(t, 96*diskMiB)
			mainDir, teamDir := filepath.Join(t.TempDir(), "main"), filepath.Join(fs, "team")
			if tc.mainOnDisk {
				mainDir, teamDir = filepath.Join(fs, "main"), filepath.Join(t.TempDir(), "team")
			}
			oneFull(t, fs, mainDir, teamDir, tc.full, tc.room)
		})
	}
}

// oneFull runs the drill with the small filesystem fs holding the
// store of repository full.
func oneFull(t *testing.T, fs, mainDir, teamDir, full, room string) {
	s := siteServer(t, mainDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tstorage_reserve 16MiB\n\t\tsub_storage team {\n\t\t\tstorage %s\n\t\t}\n\t}",
		strconv.Quote(mainDir), strconv.Quote(teamDir)), 0)
	host := s.localhostAddr()

	fullImg, roomImg := ociImage(t), ociImage(t)
	writeImage(t, host+"/"+full+":v1", fullImg)
	writeImage(t, host+"/"+room+":v1", roomImg)
	fullDigest, _ := fullImg.Digest()
	roomDigest, _ := roomImg.Digest()

	filler := tmpfs.FillTo(t, fs, 0)
	s.kill()
	s.start() // ready: /v2/ answers 200

	pullAndVerify(t, host+"/"+room+":v1", roomDigest.String())
	writeImage(t, host+"/"+room+":v2", ociImage(t))
	resp := do(t, http.MethodGet, s.url("/v2/"+full+"/manifests/v1"), nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("pull from the full store: %s, Retry-After %q; want 503 with Retry-After", resp.Status, resp.Header.Get("Retry-After"))
	} else if code := errorCode(t, resp); code != "UNAVAILABLE" {
		t.Errorf("pull from the full store: code %s, want UNAVAILABLE", code)
	}
	x := []byte("x")
	refusedFull(t, do(t, http.MethodPost, s.url("/v2/"+full+"/blobs/uploads/?digest="+blobDigest(x)), x, nil),
		"push to the full store")
	refusedFull(t, do(t, http.MethodPost, s.url("/v2/"+full+"/blobs/uploads/"), nil, nil),
		"upload session in the full store")
	if st := status(http.MethodGet, s.url("/v2/_catalog")); st >= 500 && st != http.StatusServiceUnavailable {
		t.Errorf("catalog with one store full: %d, want no other 5xx than 503", st)
	}
	s.alive("with one store full")

	// Space freed: the same process opens the store.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pullAndVerify(t, host+"/"+full+":v1", fullDigest.String())
	img2 := ociImage(t)
	ref2, _ := name.ParseReference(host+"/"+full+":v2", name.Insecure)
	if err := remote.Write(ref2, img2); err != nil {
		t.Fatalf("push to the store after space came back: %v", err)
	}
	d2, _ := img2.Digest()
	pullAndVerify(t, host+"/"+full+":v2", d2.String())
	cat := do(t, http.MethodGet, s.url("/v2/_catalog"), nil, nil)
	if body := string(readAll(t, cat)); cat.StatusCode != http.StatusOK || !strings.Contains(body, `"team/app"`) || !strings.Contains(body, `"other/app"`) {
		t.Errorf("catalog after space came back: %s %s", cat.Status, body)
	}
	s.alive("after space came back")
}
