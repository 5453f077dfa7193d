package e2e

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScrubBuiltBinary: the built binary with `scrub_interval` finds a
// blob whose file changed at the same length (which it served as the
// blob before, 200 and clean), moves the file to quarantine/, counts it
// in its metrics, and answers 404 for it, so the next push stores it
// whole again. Intact blobs stay served.
func TestScrubBuiltBinary(t *testing.T) {
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+dataDir+"\n\t\tscrub_interval 1s\n\t\tscrub_rate 1GiB\n\t}\n", 0)
	push := func(b []byte) {
		t.Helper()
		resp := do(t, http.MethodPost, s.url("/v2/team/app/blobs/uploads/?digest="+blobDigest(b)), b,
			map[string]string{"Content-Type": "application/octet-stream"})
		if readAll(t, resp); resp.StatusCode != http.StatusCreated {
			t.Fatalf("push: %s", resp.Status)
		}
	}
	damaged, intact := randomBytes(t, 300<<10), randomBytes(t, 10<<10)
	push(damaged)
	push(intact)
	d := blobDigest(damaged)
	file := filepath.Join(dataDir, "blobs", "sha256", d[7:9], d[7:])
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{damaged[200<<10] ^ 1}, 200<<10); err != nil {
		t.Fatal(err)
	}
	f.Close()

	waitFor(t, 15*time.Second, "the scrub to find the damaged blob", func() bool {
		_, err := os.Stat(file)
		return os.IsNotExist(err)
	})
	if n := s.metricSample(t, "caddy_oci_scrub_damaged_blobs_total", dataDir); n != "1" {
		t.Errorf("caddy_oci_scrub_damaged_blobs_total = %s, want 1", n)
	}
	q, err := os.ReadDir(filepath.Join(dataDir, "quarantine"))
	if err != nil || len(q) != 1 || !strings.HasPrefix(q[0].Name(), "sha256-"+d[7:]) {
		t.Fatalf("quarantine/: %v, %v", q, err)
	}
	p := "/v2/team/app/blobs/" + d
	resp := do(t, http.MethodHead, s.url(p), nil, nil)
	readAll(t, resp)
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("HEAD of the quarantined blob: %s, want 404 (so it is pushed again)", resp.Status)
	}
	push(damaged)
	for _, b := range [][]byte{damaged, intact} {
		resp := do(t, http.MethodGet, s.url("/v2/team/app/blobs/"+blobDigest(b)), nil, nil)
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
			t.Fatalf("GET %s: %s, %d bytes", blobDigest(b), resp.Status, len(got))
		}
	}
	s.alive("after the scrub")
}
