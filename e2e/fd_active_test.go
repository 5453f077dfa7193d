package e2e

import (
	"bytes"
	"fmt"
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

// TestFileDescriptorsManyActiveClients runs the server as its Caddyfile
// is (the listener's descriptor reserve on) with a limit of 256 open
// files, and 300 clients, each on connections of its own, push images
// (two blobs whole, a manifest) and pull their layers for 8 seconds:
// every answer is a success or 503 with Retry-After, never another 5xx;
// the process lives; every manifest acknowledged is there whole; and
// once the clients go, its descriptors come back to where they were.
func TestFileDescriptorsManyActiveClients(t *testing.T) {
	needBinary(t)
	if runtime.GOOS != "linux" {
		t.Skip("reads the server's /proc entries")
	}
	const limit, clients = 256, 300
	dataDir := t.TempDir()
	s := limitedServer(t, limit, true, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t}\n")
	before := fdCount(t, s)

	var mu sync.Mutex
	statuses := map[string]int{}
	var bad []string
	acked := map[string]churnImage{}
	var transportErrs atomic.Int64
	call := func(c *http.Client, method, u string, body []byte, ct string) (int, []byte) {
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := c.Do(req)
		if err != nil {
			transportErrs.Add(1)
			return 0, nil
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		mu.Lock()
		defer mu.Unlock()
		statuses[method+" "+strconv.Itoa(resp.StatusCode)]++
		if resp.StatusCode >= 500 && (resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "") && len(bad) < 10 {
			bad = append(bad, fmt.Sprintf("%s %s: %s %s", method, u, resp.Status, b))
		}
		return resp.StatusCode, b
	}
	deadline := time.Now().Add(8 * time.Second)
	var wg sync.WaitGroup
	for ci := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2}}
			defer c.CloseIdleConnections()
			repo := "fd/c" + strconv.Itoa(ci%30)
			for i := 0; time.Now().Before(deadline); i++ {
				im := newChurnImage(t)
				ok := true
				for _, b := range [][]byte{im.config, im.layer} {
					if st, _ := call(c, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b, "application/octet-stream"); st != http.StatusCreated {
						ok = false
						break
					}
				}
				if !ok {
					continue
				}
				tag := fmt.Sprintf("c%d-%d", ci, i)
				if st, _ := call(c, http.MethodPut, s.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest); st == http.StatusCreated {
					mu.Lock()
					acked[repo+":"+tag] = im
					mu.Unlock()
				}
				if st, b := call(c, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+blobDigest(im.layer)), nil, ""); st == http.StatusOK && !bytes.Equal(b, im.layer) {
					mu.Lock()
					bad = append(bad, fmt.Sprintf("GET %s/%s: 200 with %d other bytes", repo, blobDigest(im.layer), len(b)))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("answers %v; %d transport errors; %d manifests acknowledged", statuses, transportErrs.Load(), len(acked))
	for _, b := range bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	s.alive("after 300 clients at a limit of 256 files")
	if len(acked) == 0 {
		t.Fatal("no push succeeded")
	}
	fdDeadline := time.Now().Add(30 * time.Second)
	for fdCount(t, s) > before+8 && time.Now().Before(fdDeadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := fdCount(t, s); n > before+8 {
		t.Errorf("the server holds %d files 30 s after the clients went, %d before", n, before)
	}
	for ref, im := range acked {
		i := strings.LastIndex(ref, ":")
		repo, tag := ref[:i], ref[i+1:]
		resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/manifests/"+tag), nil, map[string]string{"Accept": ociManifest})
		if got := blobDigest(readAll(t, resp)); resp.StatusCode != http.StatusOK || got != im.digest {
			t.Errorf("acknowledged %s: %s %s, want %s", ref, resp.Status, got, im.digest)
		}
	}
}
