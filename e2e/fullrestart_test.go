//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestRestartOnFullDisk: another program fills the storage's filesystem
// to the last byte and the registry is killed (SIGKILL, as a crash or an
// OOM kill would) and started again. badger cannot open on a full disk
// (it writes a new memtable through a memory map, where a page the
// filesystem cannot give is a SIGBUS), so the process must not try: it
// starts, answers 503 with Retry-After (pulls) and 507 STORAGE_FULL
// (pushes), stays alive, and once the filler is deleted the same process
// opens the store and serves everything stored before, the upload
// session included, which resumes where it was. A config reload in
// between changes nothing of that.
func TestRestartOnFullDisk(t *testing.T) {
	needBinary(t)
	fs := tmpfs.Mount(t, 96*diskMiB)
	dataDir := filepath.Join(fs, "data")
	s := siteServer(t, dataDir, fmt.Sprintf("\toci_registry {\n\t\tstorage %s\n\t\tstorage_reserve 16MiB\n\t}", strconv.Quote(dataDir)), 0)
	host := s.localhostAddr()

	img := ociImage(t)
	writeImage(t, host+"/team/app:v1", img)
	d, _ := img.Digest()
	blob := randomBytes(t, 2*diskMiB)
	session := openSession(t, s, "team/upload")
	resp := do(t, http.MethodPatch, session, blob[:diskMiB], map[string]string{"Content-Range": "0-" + strconv.Itoa(diskMiB-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk: %s", resp.Status)
	}
	session = location(t, s, resp).String()

	filler := tmpfs.FillTo(t, fs, 0)
	s.kill()
	s.readyStatus = http.StatusServiceUnavailable
	s.start()

	resp = do(t, http.MethodGet, s.url("/v2/team/app/manifests/v1"), nil, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Errorf("pull on a full disk after the restart: %s, Retry-After %q; want 503 with Retry-After",
			resp.Status, resp.Header.Get("Retry-After"))
	} else if code := errorCode(t, resp); code != "UNAVAILABLE" {
		t.Errorf("pull on a full disk after the restart: code %s, want UNAVAILABLE", code)
	}
	x := []byte("x")
	refusedFull(t, do(t, http.MethodPost, s.url("/v2/team/other/blobs/uploads/?digest="+blobDigest(x)), x, nil),
		"push on a full disk after the restart")
	refusedFull(t, do(t, http.MethodPatch, session, blob[diskMiB:], map[string]string{"Content-Range": fmt.Sprintf("%d-%d", diskMiB, len(blob)-1)}),
		"chunk on a full disk after the restart")
	time.Sleep(time.Second) // a crash would be on its way
	s.alive("on a full disk after the restart")
	// 200 clients at once get the same answers, promptly.
	var wg sync.WaitGroup
	var odd atomic.Int64
	var slowest atomic.Int64
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				start := time.Now()
				method, path, want := http.MethodGet, "/v2/team/app/manifests/v1", http.StatusServiceUnavailable
				if i%2 == 1 {
					method, path, want = http.MethodPost, "/v2/team/app/blobs/uploads/", http.StatusInsufficientStorage
				}
				if status(method, s.url(path)) != want {
					odd.Add(1)
				}
				for d := int64(time.Since(start)); ; {
					if old := slowest.Load(); d <= old || slowest.CompareAndSwap(old, d) {
						break
					}
				}
			}
		}()
	}
	wg.Wait()
	if n := odd.Load(); n > 0 {
		t.Errorf("%d of 1000 requests of 200 clients on the full disk got another answer than 503 (pulls) or 507 (pushes)", n)
	}
	if d := time.Duration(slowest.Load()); d > 10*time.Second {
		t.Errorf("slowest answer of 200 clients on the full disk took %s", d)
	}
	t.Logf("200 clients on the full disk: slowest answer %s", time.Duration(slowest.Load()).Round(time.Millisecond))
	// A config reload meanwhile tries again, and answers the same.
	caddyfile, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	s.reload(t, caddyfile)
	if resp := do(t, http.MethodGet, s.url("/v2/team/app/manifests/v1"), nil, nil); resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("pull on a full disk after a reload: %s, want 503", resp.Status)
	}
	s.alive("after a reload on a full disk")

	// Space freed: the same process opens the store.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pullAndVerify(t, host+"/team/app:v1", d.String())
	resp = do(t, http.MethodGet, session, nil, nil)
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get("Range") != "0-"+strconv.Itoa(diskMiB-1) {
		t.Fatalf("session after space came back: %s Range %q, want 204 and the first chunk", resp.Status, resp.Header.Get("Range"))
	}
	resp = do(t, http.MethodPatch, session, blob[diskMiB:], map[string]string{"Content-Range": fmt.Sprintf("%d-%d", diskMiB, len(blob)-1)})
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("resuming the session: %s %q", resp.Status, readAll(t, resp))
	}
	u := location(t, s, resp)
	q := u.Query()
	q.Set("digest", blobDigest(blob))
	u.RawQuery = q.Encode()
	if resp := do(t, http.MethodPut, u.String(), nil, nil); resp.StatusCode != http.StatusCreated {
		t.Fatalf("finishing the session: %s %q", resp.Status, readAll(t, resp))
	}
	got := do(t, http.MethodGet, s.url("/v2/team/upload/blobs/"+blobDigest(blob)), nil, nil)
	if b := readAll(t, got); got.StatusCode != http.StatusOK || !bytes.Equal(b, blob) {
		t.Errorf("GET the resumed blob: %s, %d bytes", got.Status, len(b))
	}
	img2 := ociImage(t)
	ref2, _ := name.ParseReference(host+"/team/app:v2", name.Insecure)
	if err := remote.Write(ref2, img2); err != nil {
		t.Fatalf("push after space came back: %v", err)
	}
	d2, _ := img2.Digest()
	pullAndVerify(t, host+"/team/app:v2", d2.String())
	s.alive("after space came back")
}
