package e2e

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestLargeManifestPullsMemory pushes one manifest of 4 MiB (the example's
// max_manifest_size), restarts the server and pulls it with 200 clients
// at once: every pull
// gets the whole manifest, and the server's peak RSS grows by less than
// 300 MiB. Each pull held the manifest's bytes until its client had them,
// with no bound on how many at once: +610 MiB for 300 such pulls, so
// anyone allowed to pull could grow the server without limit with one
// manifest and enough clients.
func TestLargeManifestPullsMemory(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t\tmax_manifest_size 4MiB\n\t}", 0)
	im := newChurnImage(t)
	if !im.pushBlobs(s, "big/app") {
		t.Fatal("pushing the blobs failed")
	}
	pad := strings.Repeat("p", 4<<20-1024)
	big := bytes.Replace(im.manifest, []byte(`{"schemaVersion":2,`), []byte(`{"schemaVersion":2,"annotations":{"pad":"`+pad+`"},`), 1)
	if resp := do(t, http.MethodPut, s.url("/v2/big/app/manifests/big"), big, map[string]string{"Content-Type": ociManifest}); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT the 4 MiB manifest: %s %s", resp.Status, readAll(t, resp))
	}
	// A fresh process, which has not seen how large the manifest is.
	s.kill()
	s.start()
	pullManyAtOnce(t, s, "/v2/big/app/manifests/big", big)
}

// pullManyAtOnce GETs the manifest at path with 200 clients at once and
// checks that each gets want and that the server's peak RSS grows by less
// than 300 MiB.
func pullManyAtOnce(t *testing.T, s *server, path string, want []byte) {
	t.Helper()
	pid := s.cmd.Process.Pid
	before := peakRSS(t, pid)

	const clients = 200
	client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: clients}}
	var wg sync.WaitGroup
	var bad atomic.Int64
	var sample atomic.Value
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, s.url(path), nil)
			req.Header.Set("Accept", ociManifest)
			resp, err := client.Do(req)
			if err != nil {
				bad.Add(1)
				sample.Store(err.Error())
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, want) {
				bad.Add(1)
				sample.Store(resp.Status + " " + strconv.Itoa(len(b)) + " bytes")
			}
		}()
	}
	wg.Wait()
	after := peakRSS(t, pid)
	t.Logf("%d pulls of a %.1f MiB manifest in %v: peak RSS %.0f -> %.0f MiB", clients, float64(len(want))/(1<<20), time.Since(start).Round(time.Millisecond), before, after)
	if n := bad.Load(); n > 0 {
		t.Errorf("%d pulls failed, e.g. %v", n, sample.Load())
	}
	if after-before > 300 {
		t.Errorf("peak RSS grew by %.0f MiB (from %.0f), want under 300", after-before, before)
	}
}

// TestLargeMirroredManifestPullsMemory is TestLargeManifestPullsMemory
// through a mirror: a 4 MiB manifest of upstream's, cached once, pulled
// by tag with 200 clients at once after a restart (the tag still fresh,
// so each pull reads the store).
func TestLargeMirroredManifestPullsMemory(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	big := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",` +
		`"annotations":{"pad":"` + strings.Repeat("p", 4<<20-1024) + `"},` +
		`"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:` + strings.Repeat("c", 64) + `","size":2},"layers":[]}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/manifests/big") || strings.HasSuffix(r.URL.Path, "/manifests/"+blobDigest(big)) {
			w.Header().Set("Content-Type", ociManifest)
			w.Header().Set("Docker-Content-Digest", blobDigest(big))
			w.Header().Set("Content-Length", strconv.Itoa(len(big)))
			if r.Method == http.MethodGet {
				w.Write(big)
			}
		}
	}))
	defer up.Close()
	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+
		"\n\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t\ttag_ttl 1h\n\t\t}\n\t}", 0)
	if got := readAll(t, do(t, http.MethodGet, s.url("/v2/docker.io/library/big/manifests/big"), nil, map[string]string{"Accept": ociManifest})); !bytes.Equal(got, big) {
		t.Fatalf("first pull through the mirror: %d bytes", len(got))
	}
	time.Sleep(time.Second) // the store write follows the answer
	s.kill()
	s.start()
	pullManyAtOnce(t, s, "/v2/docker.io/library/big/manifests/big", big)
}
