//go:build linux

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// TestFullDiskMidFill: a mirror fill of a blob larger than the room above
// the reserve, read by several clients at once, with upstream sending its
// length and without (chunked, so the fill learns it is too big only on
// the way). No reader gets a complete 200 of other bytes, the process
// lives, nothing of the blob is stored nor left in tmp/, and
// once space is freed the same blob fills and serves whole.
func TestFullDiskMidFill(t *testing.T) {
	needBinary(t)
	const reserve = 16 * diskMiB
	fs := tmpfs.Mount(t, 64*diskMiB)
	dataDir := filepath.Join(fs, "data")

	blob := randomBytes(t, 12*diskMiB)
	digest := blobDigest(blob)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.URL.Path, "/blobs/") {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if !strings.Contains(r.URL.Path, "/chunked/") {
			w.Header().Set("Content-Length", strconv.Itoa(len(blob)))
		}
		w.WriteHeader(http.StatusOK)
		for off := 0; off < len(blob) && r.Method == http.MethodGet; off += 256 << 10 {
			if _, err := w.Write(blob[off:min(off+256<<10, len(blob))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(5 * time.Millisecond) // readers join while it fills
		}
	}))
	defer up.Close()

	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		storage_reserve %dMiB
		mirror docker.io {
			upstream %s
		}
	}`, strconv.Quote(dataDir), reserve/diskMiB, up.URL), 0)

	filler := tmpfs.FillTo(t, fs, reserve+6*diskMiB)
	for _, repo := range []string{"library/sized", "library/chunked"} {
		t.Run(repo, func(t *testing.T) {
			u := s.url("/v2/docker.io/" + repo + "/blobs/" + digest)
			var wg sync.WaitGroup
			for i := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(i) * 30 * time.Millisecond)
					resp, err := (&http.Client{Timeout: time.Minute}).Get(u)
					if err != nil {
						return // cut before the headers: fine
					}
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					switch {
					case err != nil: // cut mid-body: the client knows it failed
					case resp.StatusCode == http.StatusOK && blobDigest(b) != digest:
						t.Errorf("reader %d: 200 with %d bytes that are not the blob", i, len(b))
					case resp.StatusCode == http.StatusOK:
						t.Errorf("reader %d: the whole blob, with no room to fill it", i)
					case resp.StatusCode != http.StatusInsufficientStorage:
						t.Errorf("reader %d: %s %q, want 507 or a cut", i, resp.Status, b)
					}
				}()
			}
			wg.Wait()
			s.alive("after a fill crossed the reserve")
			// (HEAD is upstream's answer through the mirror: 200.)
			if f := findFile(dataDir, strings.TrimPrefix(digest, "sha256:")); f != "" {
				t.Errorf("the failed fill left %s", f)
			}
			if n := uploadBytes(t, dataDir); n != 0 {
				t.Errorf("%d bytes left in uploads/ and tmp/ after the failed fill", n)
			}
		})
	}
	os.Remove(filler)
	for _, repo := range []string{"library/sized", "library/chunked"} {
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/"+repo+"/blobs/"+digest), nil, nil)
		if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != digest {
			t.Errorf("%s after freeing space: %s, %d bytes", repo, resp.Status, len(b))
		}
	}
	s.alive("after freeing space")
}

// findFile returns the path of a file named base under dir, or "".
func findFile(dir, base string) (found string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == base {
			found = p
		}
		return nil
	})
	return found
}
