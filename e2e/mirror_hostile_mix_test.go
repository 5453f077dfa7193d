package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestMirrorUpstreamMisbehavesUnderClients: an upstream that answers each
// manifest and blob request, at random, whole, cut short (its length
// declared, half sent, connection closed), reset mid-body, with one byte
// flipped, 429 with Retry-After 1, or 503, while fifty clients pull the
// same image's manifest and blobs for ten seconds. No client gets a 200
// with other bytes, a 5xx other than 502/503/504, nor waits past 45 s;
// then upstream answers well, and everything is served whole.
func TestMirrorUpstreamMisbehavesUnderClients(t *testing.T) {
	needBinary(t)
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	blobs := map[string][]byte{blobDigest(config): config}
	var descs []string
	for range 6 {
		b := randomBytes(t, 256<<10+rand.IntN(512<<10))
		blobs[blobDigest(b)] = b
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, blobDigest(b), len(b)))
	}
	manifest := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		ociManifest, blobDigest(config), len(config), strings.Join(descs, ",")))
	var good atomic.Bool
	var asked sync.Map // behaviour -> *atomic.Int64
	count := func(what string) {
		v, _ := asked.LoadOrStore(what, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body []byte
		var d string
		switch {
		case r.URL.Path == "/v2/":
			return
		case strings.Contains(r.URL.Path, "/manifests/"):
			body, d = manifest, blobDigest(manifest)
			w.Header().Set("Content-Type", ociManifest)
		case strings.Contains(r.URL.Path, "/blobs/"):
			d = r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			if body = blobs[d]; body == nil {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
		default:
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Docker-Content-Digest", d)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		what := "whole"
		if !good.Load() {
			what = []string{"whole", "cut", "reset", "flipped", "429", "503"}[rand.IntN(6)]
		}
		count(what)
		switch what {
		case "429", "503":
			w.Header().Del("Content-Length")
			w.Header().Set("Retry-After", "1")
			st, _ := strconv.Atoi(what)
			w.WriteHeader(st)
			return
		case "flipped":
			b := append([]byte(nil), body...)
			b[rand.IntN(len(b))] ^= 0x20
			body = b
		}
		if r.Method == http.MethodHead {
			return
		}
		switch what {
		case "cut", "reset":
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(body[:len(body)/2])
			w.(http.Flusher).Flush()
			conn, _, err := http.NewResponseController(w).Hijack()
			if err != nil {
				return
			}
			if tc, ok := conn.(*net.TCPConn); ok && what == "reset" {
				_ = tc.SetLinger(0)
			}
			conn.Close()
		default:
			_, _ = w.Write(body)
		}
	}))
	t.Cleanup(up.Close)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			response_header_timeout 5s
			stall_timeout 5s
		}
	}`, strconv.Quote(dataDir), up.URL), 0)

	var (
		mu      sync.Mutex
		got     = map[string]int{}
		bad     []string
		slowest time.Duration
		wg      sync.WaitGroup
	)
	deadline := time.Now().Add(10 * time.Second)
	for c := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			repo := "library/app" + strconv.Itoa(c%5)
			for time.Now().Before(deadline) {
				path, want := "/v2/docker.io/"+repo+"/manifests/v1", blobDigest(manifest)
				if rand.IntN(3) > 0 {
					for d := range blobs {
						path, want = "/v2/docker.io/"+repo+"/blobs/"+d, d
						break
					}
				}
				start := time.Now()
				resp, b, err := rawDo(http.MethodGet, s.url(path), nil, map[string]string{"Accept": ociManifest})
				took := time.Since(start)
				mu.Lock()
				slowest = max(slowest, took)
				kind := "blob"
				if strings.Contains(path, "/manifests/") {
					kind = "manifest"
				}
				switch {
				case took > sweepBound:
					bad = append(bad, fmt.Sprintf("%s: answered after %s", path, took))
				case err != nil && resp != nil && resp.StatusCode == http.StatusOK:
					got[kind+" 200 cut"]++
				case err != nil:
					bad = append(bad, fmt.Sprintf("%s: no answer: %v", path, err))
				case resp.StatusCode == http.StatusOK && blobDigest(b) != want:
					bad = append(bad, fmt.Sprintf("%s: 200 with %d bytes hashing to %s", path, len(b), blobDigest(b)))
				case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusBadGateway, resp.StatusCode == http.StatusGatewayTimeout, resp.StatusCode == http.StatusTooManyRequests:
					got[kind+" "+strconv.Itoa(resp.StatusCode)]++
				case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
					got[kind+" 503"]++
				default:
					bad = append(bad, fmt.Sprintf("%s: %s %.200s", path, resp.Status, b))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	upstreamSaw := map[string]int64{}
	asked.Range(func(k, v any) bool { upstreamSaw[k.(string)] = v.(*atomic.Int64).Load(); return true })
	t.Logf("upstream answered %v; clients got %v; slowest %s", upstreamSaw, got, slowest.Round(time.Millisecond))
	for i, b := range bad {
		if i == 10 {
			t.Errorf("... and %d more", len(bad)-10)
			break
		}
		t.Errorf("broke the rules: %s", b)
	}
	s.alive("beside the misbehaving upstream")

	good.Store(true)
	time.Sleep(2 * time.Second) // past any Retry-After held
	for c := range 5 {
		repo := "library/app" + strconv.Itoa(c)
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/"+repo+"/manifests/v1"), nil, map[string]string{"Accept": ociManifest})
		if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != blobDigest(manifest) {
			t.Errorf("%s's manifest once upstream answers well: %s", repo, resp.Status)
		}
		for d := range blobs {
			resp := do(t, http.MethodGet, s.url("/v2/docker.io/"+repo+"/blobs/"+d), nil, nil)
			if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != d {
				t.Errorf("%s@%s once upstream answers well: %s, %d bytes", repo, d, resp.Status, len(b))
			}
		}
	}
}
