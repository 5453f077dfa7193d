//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oci/caddy-oci/internal/tmpfs"
)

// reloadTally is what the clients of TestReloadsReserveAndUpstreams got.
type reloadTally struct {
	mu      sync.Mutex
	got     map[string]int // "kind status" counts
	images  []sweepAck     // manifests answered 201
	bad     []string
	slowest time.Duration
}

func (l *reloadTally) wrong(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bad = append(l.bad, fmt.Sprintf(format, args...))
}

// do sends one request, once more on a fresh connection after a transport
// error (a reload closes idle connections; clients retry that), and
// returns its status and body (0: no answer twice). Statuses outside ok,
// and 503 without Retry-After, break the drill's rules.
func (l *reloadTally) do(kind, method, u string, body []byte, ct string, ok ...int) (int, []byte) {
	for attempt := range 2 {
		req, _ := http.NewRequest(method, u, bytes.NewReader(body))
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		client := sweepClient
		if attempt > 0 {
			client = &http.Client{Timeout: sweepClient.Timeout, Transport: &http.Transport{DisableKeepAlives: true}}
		}
		start := time.Now()
		resp, err := client.Do(req)
		var b []byte
		if err == nil {
			b, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		took := time.Since(start)
		l.mu.Lock()
		l.slowest = max(l.slowest, took)
		l.mu.Unlock()
		if took >= sweepBound {
			l.wrong("%s %s: %s to answer (%v)", method, u, took.Round(time.Millisecond), err)
		}
		if err != nil {
			if attempt == 1 {
				l.wrong("%s %s: no answer, twice: %v", method, u, err)
			}
			continue
		}
		l.mu.Lock()
		l.got[kind+" "+strconv.Itoa(resp.StatusCode)]++
		l.mu.Unlock()
		switch {
		case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
		case resp.StatusCode == http.StatusInsufficientStorage:
		case !containsInt(ok, resp.StatusCode):
			l.wrong("%s %s: %s %.200s", method, u, resp.Status, b)
		}
		return resp.StatusCode, b
	}
	return 0, nil
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestReloadsReserveAndUpstreams: ten config reloads of a single node,
// under forty clients, each changing the mirror's upstream (to another
// registry holding the same blobs, to one that refuses connections with
// the first as a fallback, back) and the storage reserve (4 MiB, or more
// than the disk has free), while the disk (a 96 MiB tmpfs) is filled to
// 6 MiB free for the middle four reloads. Pushes, pulls of what was
// pushed, and cold and warm mirrored pulls go on throughout. Every reload
// is taken; every answer comes within 45 s and is a success, 507, 503
// with Retry-After, or 502/504 for the mirror, never another 5xx nor a
// mirrored blob with other bytes; what was acknowledged is whole after;
// with the last config (small reserve, space freed) pushes and fills work
// without a restart.
func TestReloadsReserveAndUpstreams(t *testing.T) {
	needBinary(t)
	fs := tmpfs.Mount(t, 96*diskMiB)
	dataDir := filepath.Join(fs, "data")
	a, b := newUpstream(t), newUpstream(t)
	var mirrored []string
	for range 800 {
		blob := randomBytes(t, 32<<10)
		upstreamBlob(t, a, "library/fill", blob)
		mirrored = append(mirrored, upstreamBlob(t, b, "library/fill", blob))
	}
	refused := "http://127.0.0.1:" + strconv.Itoa(freePort(t))
	site := func(reserve string, upstreams ...string) string {
		return fmt.Sprintf(`	oci_registry {
		storage %s
		storage_reserve %s
		gc_interval 1s
		gc_grace 2s
		mirror docker.io {
			upstream %s
			response_header_timeout 3s
			stall_timeout 5s
		}
	}`, strconv.Quote(dataDir), reserve, strings.Join(upstreams, " "))
	}
	s := siteServer(t, dataDir, site("4MiB", a.URL), 0)
	configs := []string{
		site("4MiB", b.URL),
		site("4MiB", refused, a.URL),
		site("200MiB", a.URL), // more than the disk: every write refused
		site("4MiB", b.URL),
		site("4MiB", refused, b.URL), // the disk full from here
		site("200MiB", a.URL),
		site("4MiB", a.URL),
		site("4MiB", refused), // upstream down
		site("200MiB", b.URL), // space freed from here
		site("4MiB", a.URL),
	}

	l := &reloadTally{got: map[string]int{}}
	clients := newLoops()
	for w := range 16 { // pushes
		clients.run(func(n int) {
			im := newChurnImage(t)
			repo, tag := "reload/w"+strconv.Itoa(w), "t"+strconv.Itoa(n)
			for _, blob := range [][]byte{im.config, im.layer} {
				if st, _ := l.do("push blob", http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(blob)), blob, "application/octet-stream", http.StatusCreated); st != http.StatusCreated {
					time.Sleep(50 * time.Millisecond)
					return
				}
			}
			if st, _ := l.do("push manifest", http.MethodPut, s.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest, http.StatusCreated); st == http.StatusCreated {
				l.mu.Lock()
				l.images = append(l.images, sweepAck{repo: repo, tag: tag, im: im})
				l.mu.Unlock()
			}
		})
	}
	var nextCold atomic.Int64
	for range 16 { // mirrored pulls, most of them cold
		clients.run(func(int) {
			i := int(nextCold.Add(1)-1) % len(mirrored)
			if rand.IntN(4) == 0 {
				i = rand.IntN(i + 1)
			}
			d := mirrored[i]
			st, body := l.do("mirror", http.MethodGet, s.url("/v2/docker.io/library/fill/blobs/"+d), nil, "",
				http.StatusOK, http.StatusBadGateway, http.StatusGatewayTimeout)
			if st == http.StatusOK && blobDigest(body) != d {
				l.wrong("mirrored %s: 200 with %d bytes hashing to %s", d, len(body), blobDigest(body))
			}
		})
	}
	for range 8 { // pulls of what was pushed
		clients.run(func(int) {
			l.mu.Lock()
			if len(l.images) == 0 {
				l.mu.Unlock()
				time.Sleep(50 * time.Millisecond)
				return
			}
			a := l.images[rand.IntN(len(l.images))]
			l.mu.Unlock()
			st, body := l.do("pull", http.MethodGet, s.url("/v2/"+a.repo+"/blobs/"+blobDigest(a.im.layer)), nil, "", http.StatusOK)
			if st == http.StatusOK && !bytes.Equal(body, a.im.layer) {
				l.wrong("%s's layer: %d bytes, not what was pushed", a.repo, len(body))
			}
		})
	}

	var filler string
	for i, cfg := range configs {
		time.Sleep(time.Duration(700+rand.IntN(600)) * time.Millisecond)
		switch i {
		case 4:
			filler = fillAbout(t, fs, 6*diskMiB)
		case 8:
			if err := os.Remove(filler); err != nil {
				t.Fatal(err)
			}
		}
		start := time.Now()
		st, body := reloadWith(t, s, configOf(t, s), "http://:"+portOf(s)+" {\n\tbind 127.0.0.1\n"+cfg+"\n}\n")
		if st != http.StatusOK {
			t.Errorf("reload %d: %d %s", i+1, st, body)
		}
		t.Logf("reload %d taken in %s", i+1, time.Since(start).Round(time.Millisecond))
		s.alive(fmt.Sprintf("after reload %d", i+1))
	}
	time.Sleep(2 * time.Second)
	clients.halt()

	l.mu.Lock()
	images := append([]sweepAck(nil), l.images...)
	t.Logf("answers: %v; %d images acknowledged; slowest %s", l.got, len(images), l.slowest.Round(time.Millisecond))
	for i, w := range l.bad {
		if i == 10 {
			t.Errorf("... and %d more", len(l.bad)-10)
			break
		}
		t.Errorf("broke the rules: %s", w)
	}
	l.mu.Unlock()
	for _, a := range images {
		checkImage(t, s, a.repo, a.tag, "after the reloads")
	}
	for _, d := range mirrored[:40] {
		resp := do(t, http.MethodGet, s.url("/v2/docker.io/library/fill/blobs/"+d), nil, nil)
		if body := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(body) != d {
			t.Errorf("mirrored %s after the reloads: %s, %d bytes", d, resp.Status, len(body))
		}
	}
	im := newChurnImage(t)
	if !im.pushBlobs(s, "reload/after") || !im.putManifest(s, "reload/after", "v1") {
		t.Error("a push after the last reload failed")
	}
	checkImage(t, s, "reload/after", "v1", "after the reloads")
}

// configOf is the whole config s runs now.
func configOf(t *testing.T, s *server) string {
	t.Helper()
	b, err := os.ReadFile(s.config)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), "http://:")
	if i < 0 {
		t.Fatal("no site in the config")
	}
	return string(b[i:])
}

// portOf is the port s serves the registry on.
func portOf(s *server) string { return s.addr[strings.LastIndex(s.addr, ":")+1:] }

// fillAbout writes a filler file into dir until about left bytes stay
// free, and returns its path. Unlike tmpfs.FillTo it does not insist on
// the figure: pushes go on writing beside it.
func fillAbout(t *testing.T, dir string, left int64) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for tmpfs.Free(t, dir) > left+int64(len(buf)) {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	return f.Name()
}
