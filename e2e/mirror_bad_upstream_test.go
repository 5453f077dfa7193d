package e2e

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
)

// TestMirrorOneBadUpstream: of four mirrors, one's upstream refuses
// connections, one's name does not resolve, one accepts connections and
// never answers (until response_header_timeout); the fourth works. While
// a hundred clients hammer the three bad ones with cold manifest and blob
// pulls, cold and warm pulls through the good mirror take their usual
// time, and every bad answer is a 502 or 504 within the mirror's
// timeouts, never a hang; or a 429 once the flood, which comes from one
// address, has spent that mirror's max_misses_per_client.
func TestMirrorOneBadUpstream(t *testing.T) {
	needBinary(t)
	good := newUpstream(t)
	img, err := random.Image(4096, 2)
	if err != nil {
		t.Fatal(err)
	}
	good.push(t, "library/app:v1", img)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
		}
		mirror refused.example {
			upstream http://127.0.0.1:%d
		}
		mirror nxdomain.example {
			upstream http://registry.nxdomain.invalid
		}
		mirror hung.example {
			upstream http://%s
			response_header_timeout 3s
		}
	}`, strconv.Quote(dataDir), good.URL, freePort(t), hungListener(t)), 0)

	var (
		mu      sync.Mutex
		answers = map[string]int{}
		slowBad time.Duration
		done    atomic.Bool
	)
	var wg sync.WaitGroup
	for w := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix := []string{"refused.example", "nxdomain.example", "hung.example"}[w%3]
			for n := 0; !done.Load(); n++ {
				path := fmt.Sprintf("/v2/%s/library/x%d/manifests/t%d", prefix, w, n)
				if n%2 == 1 {
					path = fmt.Sprintf("/v2/%s/library/x%d/blobs/sha256:%064x", prefix, w, n)
				}
				start := time.Now()
				st := status(http.MethodGet, s.url(path))
				took := time.Since(start)
				mu.Lock()
				answers[fmt.Sprintf("%s %d", prefix, st)]++
				slowBad = max(slowBad, took)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(time.Second) // the bad mirrors' requests pile up
	var slowest time.Duration
	layers, _ := img.Layers()
	for round := range 10 {
		start := time.Now()
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/library/app/manifests/v1"), nil, map[string]string{"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
		if resp.StatusCode != http.StatusOK {
			t.Errorf("good mirror's manifest: %s", resp.Status)
		}
		ld, _ := layers[round%len(layers)].Digest()
		resp = do(t, http.MethodGet, s.url("/v2/docker.io/library/app/blobs/"+ld.String()), nil, nil)
		if resp.StatusCode != http.StatusOK {
			t.Errorf("good mirror's blob: %s", resp.Status)
		}
		slowest = max(slowest, time.Since(start))
		time.Sleep(300 * time.Millisecond)
	}
	done.Store(true)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("bad mirrors' answers: %v, slowest %s; the good mirror's pulls: slowest %s", answers, slowBad.Round(time.Millisecond), slowest.Round(time.Millisecond))
	for k := range answers {
		var prefix string
		var st int
		fmt.Sscanf(k, "%s %d", &prefix, &st)
		if st != http.StatusBadGateway && st != http.StatusGatewayTimeout && st != http.StatusTooManyRequests {
			t.Errorf("a bad upstream's pull answered %d (%s)", st, k)
		}
	}
	if slowest > 2*time.Second {
		t.Errorf("the good mirror's pulls took up to %s beside the bad ones", slowest)
	}
	if slowBad > 8*time.Second {
		t.Errorf("a bad mirror's pull took %s (response_header_timeout 3s)", slowBad)
	}
}

// hungListener accepts connections and never answers on them; it
// returns its host:port.
func hungListener(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}
