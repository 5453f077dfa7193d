package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// stallingUpstream serves an image's manifest at once and its blobs with
// their length, half of each blob, then nothing while stalled is set
// (until the request ends). Blobs are served whole when stalled is unset.
type stallingUpstream struct {
	*httptest.Server
	stalled  atomic.Bool
	manifest []byte
	blobs    map[string][]byte
	inFlight atomic.Int64 // blob answers still open
}

func newStallingUpstream(t *testing.T, layers int) *stallingUpstream {
	t.Helper()
	u := &stallingUpstream{blobs: map[string][]byte{}}
	config := []byte(`{"architecture":"amd64","os":"linux"}`)
	u.blobs[blobDigest(config)] = config
	var descs []string
	for range layers {
		b := randomBytes(t, 2<<20+rand.IntN(1<<20))
		u.blobs[blobDigest(b)] = b
		descs = append(descs, fmt.Sprintf(`{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":%q,"size":%d}`, blobDigest(b), len(b)))
	}
	u.manifest = []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":%q,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":%q,"size":%d},"layers":[%s]}`,
		ociManifest, blobDigest(config), len(config), strings.Join(descs, ",")))
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.WriteHeader(http.StatusOK)
		case strings.Contains(r.URL.Path, "/manifests/"):
			w.Header().Set("Content-Type", ociManifest)
			w.Header().Set("Docker-Content-Digest", blobDigest(u.manifest))
			w.Header().Set("Content-Length", strconv.Itoa(len(u.manifest)))
			if r.Method == http.MethodGet {
				_, _ = w.Write(u.manifest)
			}
		case strings.Contains(r.URL.Path, "/blobs/"):
			d := r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]
			b, ok := u.blobs[d]
			if !ok {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Header().Set("Docker-Content-Digest", d)
			w.Header().Set("Content-Length", strconv.Itoa(len(b)))
			if r.Method != http.MethodGet {
				return
			}
			u.inFlight.Add(1)
			defer u.inFlight.Add(-1)
			if !u.stalled.Load() {
				_, _ = w.Write(b)
				return
			}
			_, _ = w.Write(b[:len(b)/2])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(u.Close)
	return u
}

// TestMirrorStalledBlobsCancelledClients: an upstream answers the image's
// manifest, then sends half of each blob and stalls. Forty clients pull
// the manifest and then the blobs; half give up (cancel) after 0.1-2 s,
// the rest wait. With the mirror's stall_timeout at 5 s: every manifest
// is 200 at once; every waiting client's blob ends within the stall
// timeout and a margin, as 504 or a broken transfer, never a 200 with
// short or other bytes, never a 5xx other than 502/504; while stalled, no
// blob is served whole from the store. Once upstream sends whole blobs
// again, every blob is served whole, nothing is left in the store's tmp
// folder nor open to upstream, and the server's goroutines and open files
// are back near where they were.
//
// On a replica (S3 and PostgreSQL) the same holds, and no multipart
// upload is left in the bucket.
func TestMirrorStalledBlobsCancelledClients(t *testing.T) {
	t.Run("single node", func(t *testing.T) {
		needBinary(t)
		up := newStallingUpstream(t, 4)
		dataDir := filepath.Join(t.TempDir(), "data")
		s := siteServer(t, dataDir, fmt.Sprintf(`	oci_registry {
		storage %s
		mirror docker.io {
			upstream %s
			stall_timeout 5s
		}
	}`, strconv.Quote(dataDir), up.URL), 0)
		stalledBlobsCancelled(t, s, up, func() string { return tmpLeft(t, dataDir) })
	})
	t.Run("replica", func(t *testing.T) {
		up := newStallingUpstream(t, 4)
		c := startCluster(t, 1, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t\tstall_timeout 5s\n\t\t}\n", nil)
		stalledBlobsCancelled(t, c.replicas[0], up, func() string {
			_, uploads := c.s3.Keys(t, c.bucket, "")
			return strings.Join(uploads, ", ")
		})
	})
}

// stalledBlobsCancelled runs the drill on s, mirroring up; left names
// what the failed fills left behind, if anything.
func stalledBlobsCancelled(t *testing.T, s *server, up *stallingUpstream, left func() string) {
	goroutinesBefore, fdsBefore := goroutines(t, s), fdCount(t, s)
	up.stalled.Store(true)

	var digests []string
	for d := range up.blobs {
		digests = append(digests, d)
	}
	var (
		mu      sync.Mutex
		got     = map[string]int{}
		slowest time.Duration
		wg      sync.WaitGroup
	)
	note := func(what string, took time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		got[what]++
		slowest = max(slowest, took)
	}
	for c := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			repo := "library/app" + strconv.Itoa(c%3)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if c%2 == 0 {
				ctx, cancel = context.WithTimeout(ctx, time.Duration(100+rand.IntN(1900))*time.Millisecond)
				defer cancel()
			}
			start := time.Now()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/v2/docker.io/"+repo+"/manifests/v1"), nil)
			req.Header.Set("Accept", ociManifest)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				note("manifest: no answer", time.Since(start))
				return
			}
			mb, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || blobDigest(mb) != blobDigest(up.manifest) {
				note(fmt.Sprintf("manifest: %d, %d bytes", resp.StatusCode, len(mb)), time.Since(start))
				return
			}
			note("manifest: 200 whole", time.Since(start))
			for _, d := range digests {
				start := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.url("/v2/docker.io/"+repo+"/blobs/"+d), nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					note(cancelledOr(ctx, fmt.Sprintf("blob: no answer (%d bytes: %v)", len(up.blobs[d]), err)), time.Since(start))
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == http.StatusOK && err == nil && blobDigest(b) == d && len(up.blobs[d]) < 100:
					note("config: 200 whole", time.Since(start)) // a config is sent whole before any stall
				case resp.StatusCode == http.StatusOK && err == nil:
					note(fmt.Sprintf("blob: 200 with %d of %d bytes, digest right: %t", len(b), len(up.blobs[d]), blobDigest(b) == d), time.Since(start))
				case resp.StatusCode == http.StatusOK:
					note(cancelledOr(ctx, "blob: 200 cut"), time.Since(start))
				default:
					note(fmt.Sprintf("blob: %d", resp.StatusCode), time.Since(start))
				}
			}
		}()
	}
	wg.Wait()
	mu.Lock()
	t.Logf("while upstream stalls: %v; slowest %s", got, slowest.Round(time.Millisecond))
	for what := range got {
		switch what {
		case "manifest: 200 whole", "config: 200 whole", "blob: 200 cut", "blob: 504", "blob: 502", "blob: cancelled", "manifest: cancelled":
		default:
			if !strings.HasSuffix(what, ": cancelled") {
				t.Errorf("while upstream stalls: %s (%d times)", what, got[what])
			}
		}
	}
	if slowest > 15*time.Second {
		t.Errorf("a pull took %s with stall_timeout 5s", slowest)
	}
	mu.Unlock()
	s.alive("while upstream stalls")

	up.stalled.Store(false)
	waitFor(t, 20*time.Second, "upstream's stalled answers to end", func() bool { return up.inFlight.Load() == 0 })
	for _, repo := range []string{"library/app0", "library/app1", "library/app2"} {
		for _, d := range digests {
			resp := do(t, http.MethodGet, s.url("/v2/docker.io/"+repo+"/blobs/"+d), nil, nil)
			if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != d {
				t.Errorf("%s@%s once upstream answers: %s, %d bytes", repo, d, resp.Status, len(b))
			}
		}
	}
	waitFor(t, 20*time.Second, "the server's goroutines and files to settle", func() bool {
		return goroutines(t, s) <= goroutinesBefore+10 && fdCount(t, s) <= fdsBefore+10
	})
	waitFor(t, 20*time.Second, "nothing left of the failed fills", func() bool { return left() == "" })
}

// cancelledOr is "blob: cancelled" when the client gave up itself, what
// otherwise.
func cancelledOr(ctx context.Context, what string) string {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return strings.SplitN(what, ":", 2)[0] + ": cancelled"
	}
	return what
}

// tmpLeft names files under dataDir's tmp and uploads folders, if any.
func tmpLeft(t *testing.T, dataDir string) string {
	t.Helper()
	var left []string
	for _, sub := range []string{"tmp", "uploads"} {
		_ = filepath.WalkDir(filepath.Join(dataDir, sub), func(p string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				left = append(left, p)
			}
			return nil
		})
	}
	return strings.Join(left, ", ")
}
