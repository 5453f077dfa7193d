package e2e

import (
	"bytes"
	"io"
	"net/http"
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
			req, _ := http.NewRequest(http.MethodGet, s.url("/v2/big/app/manifests/big"), nil)
			req.Header.Set("Accept", ociManifest)
			resp, err := client.Do(req)
			if err != nil {
				bad.Add(1)
				sample.Store(err.Error())
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(b, big) {
				bad.Add(1)
				sample.Store(resp.Status + " " + strconv.Itoa(len(b)) + " bytes")
			}
		}()
	}
	wg.Wait()
	after := peakRSS(t, pid)
	t.Logf("%d pulls of a 4 MiB manifest in %v: peak RSS %.0f -> %.0f MiB", clients, time.Since(start).Round(time.Millisecond), before, after)
	if n := bad.Load(); n > 0 {
		t.Errorf("%d pulls failed, e.g. %v", n, sample.Load())
	}
	if after-before > 300 {
		t.Errorf("peak RSS grew by %.0f MiB (from %.0f), want under 300", after-before, before)
	}
}
