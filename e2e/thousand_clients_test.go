//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestThousandClients: 1,000 clients at once on the single node, each on
// connections of its own, for two rounds of 6 s: a third pull mirrored
// blobs (cold at first: fills that hundreds of readers join), a third
// pull pushed blobs, a third push images (two blobs and a manifest).
// (On two shared CPUs a request takes seconds at this load: each client
// gets a few requests through a round. The blobs are small, 512 KiB
// mirrored and 256 KiB pushed, because what the drill is about is the
// number of clients: with 2 and 1 MiB, the test process itself, under
// the race detector beside the rest of CI, read the bodies so slowly
// that 20 GETs ran past the clients' 45 s timeout, while the server used
// 5 CPU-seconds a round.)
// Every answer is a success or 503 with Retry-After; every blob read is
// its bytes; the process lives; the second round's peak RSS, descriptors
// and goroutines are not above the first's by more than a margin (what
// grows round after round grows without bound); and once the clients go,
// descriptors and goroutines come back near where they were.
func TestThousandClients(t *testing.T) {
	needBinary(t)
	const clients = 1000
	const round = 6 * time.Second

	// Each round pulls its own 6 mirrored blobs, cold when it starts.
	mirrored := map[string][]byte{}
	var mirroredDigests [2][]string
	for n := range mirroredDigests {
		for range 6 {
			b := randomBytes(t, 512<<10)
			mirrored[blobDigest(b)] = b
			mirroredDigests[n] = append(mirroredDigests[n], blobDigest(b))
		}
	}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		i := strings.LastIndex(r.URL.Path, "/blobs/")
		if i < 0 {
			w.WriteHeader(http.StatusOK)
			return
		}
		b, ok := mirrored[r.URL.Path[i+len("/blobs/"):]]
		if !ok {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		w.Header().Set("Docker-Content-Digest", blobDigest(b))
		w.Header().Set("Content-Type", "application/octet-stream")
		if r.Method != http.MethodGet {
			return
		}
		for off := 0; off < len(b); off += 64 << 10 { // about 0.4 s a blob
			if _, err := w.Write(b[off:min(off+64<<10, len(b))]); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(50 * time.Millisecond)
		}
	}))
	t.Cleanup(up.Close)

	dataDir := t.TempDir()
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+
		"\n\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n\t}\n", 0)
	pushedBlobs := map[string][]byte{}
	var pushedDigests []string
	for range 16 {
		b := randomBytes(t, 256<<10)
		pushBlob(t, s, "base/app", b)
		pushedBlobs[blobDigest(b)] = b
		pushedDigests = append(pushedDigests, blobDigest(b))
	}
	fdBefore, grBefore := fdCount(t, s), goroutines(t, s)

	var mu sync.Mutex
	statuses := map[string]int{}
	var bad []string
	var transportErrs atomic.Int64
	note := func(what string, badf string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		statuses[what]++
		if badf != "" && len(bad) < 20 {
			bad = append(bad, fmt.Sprintf(badf, args...))
		}
	}
	slowest := map[string]time.Duration{}
	call := func(c *http.Client, kind, method, u string, body []byte, ct string, want []byte) int {
		start := time.Now()
		defer func() {
			took := time.Since(start)
			mu.Lock()
			slowest[kind] = max(slowest[kind], took)
			mu.Unlock()
		}()
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		if body == nil {
			req.Body, req.ContentLength = http.NoBody, 0
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := c.Do(req)
		if err != nil {
			transportErrs.Add(1)
			note(kind+" transport error", "")
			return 0
		}
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		what := kind + " " + strconv.Itoa(resp.StatusCode)
		switch {
		case rerr != nil:
			note(kind+" cut", "%s %s: body cut: %v", method, u, rerr)
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
			note(what, "")
		case resp.StatusCode >= 500:
			note(what, "%s %s: %s %s", method, u, resp.Status, b)
		case want != nil && resp.StatusCode == http.StatusOK && !bytes.Equal(b, want):
			note(what, "%s %s: 200 with %d bytes that are not the blob", method, u, len(b))
		default:
			note(what, "")
		}
		return resp.StatusCode
	}

	type roundStats struct {
		rss       float64
		fds, grs  int
		requests  int
		acked     int
		ackedRefs map[string]string
	}
	runRound := func(n int) roundStats {
		peak := samplePeak(t, s.cmd.Process.Pid, "VmRSS")
		var fdPeak, grPeak atomic.Int64
		stop := make(chan struct{})
		sampled := make(chan struct{})
		go func() {
			defer close(sampled)
			for {
				select {
				case <-stop:
					return
				case <-time.After(500 * time.Millisecond):
				}
				if es, err := readDirCount(s); err == nil && int64(es) > fdPeak.Load() {
					fdPeak.Store(int64(es))
				}
				if g, err := goroutinesErr(s); err == nil && int64(g) > grPeak.Load() {
					grPeak.Store(int64(g))
				}
			}
		}()
		st := roundStats{ackedRefs: map[string]string{}}
		var reqs atomic.Int64
		deadline := time.Now().Add(round)
		var wg sync.WaitGroup
		for ci := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := &http.Client{Timeout: 45 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
				defer c.CloseIdleConnections()
				for i := 0; time.Now().Before(deadline); i++ {
					reqs.Add(1)
					switch (ci + i) % 3 {
					case 0:
						d := mirroredDigests[n][(ci*7+i)%len(mirroredDigests[n])]
						call(c, "mirror GET", http.MethodGet, s.url("/v2/docker.io/library/app/blobs/"+d), nil, "", mirrored[d])
					case 1:
						d := pushedDigests[(ci*5+i)%len(pushedDigests)]
						call(c, "pushed GET", http.MethodGet, s.url("/v2/base/app/blobs/"+d), nil, "", pushedBlobs[d])
					default:
						im := newChurnImage(t)
						repo := "load/c" + strconv.Itoa(ci%50)
						if call(c, "blob POST", http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(im.config)), im.config, "application/octet-stream", nil) != http.StatusCreated ||
							call(c, "blob POST", http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(im.layer)), im.layer, "application/octet-stream", nil) != http.StatusCreated {
							continue
						}
						tag := fmt.Sprintf("r%d-c%d-%d", n, ci, i)
						if call(c, "manifest PUT", http.MethodPut, s.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest, nil) == http.StatusCreated {
							mu.Lock()
							st.ackedRefs[repo+":"+tag] = im.digest
							mu.Unlock()
						}
					}
				}
			}()
		}
		wg.Wait()
		close(stop)
		<-sampled
		st.rss = peak()
		st.fds, st.grs = int(fdPeak.Load()), int(grPeak.Load())
		st.requests = int(reqs.Load())
		st.acked = len(st.ackedRefs)
		return st
	}

	var rounds []roundStats
	for n := range 2 {
		start, cpu := time.Now(), cpuSeconds(s)
		st := runRound(n)
		rounds = append(rounds, st)
		t.Logf("round %d (%v, the server's CPU %.1f s): %d requests, %d images acknowledged; peak RSS %.0f MiB, descriptors %d, goroutines %d",
			n, time.Since(start).Round(100*time.Millisecond), cpuSeconds(s)-cpu, st.requests, st.acked, st.rss, st.fds, st.grs)
	}
	t.Logf("answers %v; %d transport errors; slowest %v", statuses, transportErrs.Load(), slowest)
	for _, b := range bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	s.alive("after 1,000 clients")
	// Descriptors and goroutines follow the connections open at the
	// moment (two goroutines each); what is left once they close is
	// checked below.
	if a, b := rounds[0], rounds[1]; b.rss > a.rss*1.5+64 {
		t.Errorf("the second round took more memory than the first: peak RSS %.0f then %.0f MiB", a.rss, b.rss)
	}
	var fdAfter, grAfter int
	waitFor(t, 20*time.Second, "descriptors and goroutines back near where they were", func() bool {
		fdAfter, grAfter = fdCount(t, s), goroutines(t, s)
		return fdAfter <= fdBefore+16 && grAfter <= grBefore+32
	})
	t.Logf("after the clients: %d descriptors (%d before), %d goroutines (%d before)", fdAfter, fdBefore, grAfter, grBefore)
	checked := 0
	for _, r := range rounds {
		for ref, d := range r.ackedRefs {
			if checked >= 200 {
				break
			}
			checked++
			i := strings.LastIndex(ref, ":")
			resp := do(t, http.MethodGet, s.url("/v2/"+ref[:i]+"/manifests/"+ref[i+1:]), nil, map[string]string{"Accept": ociManifest})
			if got := blobDigest(readAll(t, resp)); resp.StatusCode != http.StatusOK || got != d {
				t.Errorf("acknowledged %s: %s %s, want %s", ref, resp.Status, got, d)
			}
		}
	}
}

// readDirCount is fdCount for a sampling goroutine: an error, not t.Fatal.
func readDirCount(s *server) (int, error) {
	es, err := osReadDir("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/fd")
	return len(es), err
}

var osReadDir = os.ReadDir

// goroutinesErr is goroutines for a sampling goroutine.
func goroutinesErr(s *server) (int, error) {
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("no go_goroutines")
}

// cpuSeconds is the user and system time the server has used.
func cpuSeconds(s *server) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	u, _ := strconv.Atoi(f[11])
	k, _ := strconv.Atoi(f[12])
	return float64(u+k) / 100 // USER_HZ
}
