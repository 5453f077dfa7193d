package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReplicaS3RestartUnderLoad kills the S3 server (SIGKILL: every
// pooled connection dies with it) and starts it again, twice, while eight
// clients push images, pull the ones acknowledged and pull cold mirrored
// blobs across two replicas with GC running. Every answer is a success or
// 503 with Retry-After, within the clients' bound; once S3 is back the
// same replica processes serve again within seconds; every manifest
// answered 201 is there whole afterwards, after GC passes, through both
// replicas, and every mirrored blob served whole is served whole again.
func TestReplicaS3RestartUnderLoad(t *testing.T) {
	needBinary(t)
	up := newUpstream(t)
	var mirrored []string
	for range 200 {
		mirrored = append(mirrored, upstreamBlob(t, up, "library/fill", randomBytes(t, 64<<10+rand.IntN(64<<10))))
	}
	c := startCluster(t, 2, drillGC+"\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n", nil)
	l := &pgLoad{statuses: map[string]int{}, acked: map[[2]string]churnImage{}}
	var (
		fillsMu sync.Mutex
		fills   = map[string]bool{}
		wrong   []string
		next    atomic.Int64
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				r := c.replicas[(w+n)%2]
				switch w % 4 {
				case 3: // pulls of what was acknowledged
					l.mu.Lock()
					var im churnImage
					var ref [2]string
					for k, v := range l.acked {
						im, ref = v, k
						break
					}
					l.mu.Unlock()
					if ref[0] != "" {
						l.do(http.MethodGet, r.url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, "")
						l.do(http.MethodGet, r.url("/v2/"+ref[0]+"/blobs/"+blobDigest(im.layer)), nil, "")
					}
					time.Sleep(20 * time.Millisecond)
				case 2: // cold mirror fills
					d := mirrored[int(next.Add(1)-1)%len(mirrored)]
					u := r.url("/v2/docker.io/library/fill/blobs/" + d)
					start := time.Now()
					resp, b, err := rawDo(http.MethodGet, u, nil, nil)
					st, h := 0, http.Header{}
					if err == nil {
						st, h = resp.StatusCode, resp.Header
					}
					l.note(http.MethodGet, u, st, h, time.Since(start))
					fillsMu.Lock()
					switch {
					case st == http.StatusOK && blobDigest(b) == d:
						fills[d] = true
					case st == http.StatusOK:
						wrong = append(wrong, fmt.Sprintf("mirrored %s: 200 with %d bytes", d, len(b)))
					}
					fillsMu.Unlock()
				default: // pushes
					repo, tag := "drill/s3r"+strconv.Itoa(w), "t"+strconv.Itoa(n)
					im := newChurnImage(t)
					if !l.pushBlobs(r, repo, im) {
						continue
					}
					if l.do(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest) == http.StatusCreated {
						l.mu.Lock()
						l.acked[[2]string{repo, tag}] = im
						l.mu.Unlock()
					}
				}
			}
		}()
	}
	for round := range 2 {
		l.outage(t, "S3", "kill "+strconv.Itoa(round+1), func() error { c.s3.Kill(); return nil }, func() error { c.s3.Restart(t); return nil })
	}
	time.Sleep(3 * time.Second)
	close(stop)
	wg.Wait()

	l.mu.Lock()
	keys := make([]string, 0, len(l.statuses))
	for k := range l.statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %s:%d", k, l.statuses[k])
	}
	t.Logf("answers:%s; slowest %s; %d manifests and %d mirrored blobs acknowledged", summary, l.slowest.Round(time.Millisecond), len(l.acked), len(fills))
	for _, b := range l.bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	if l.slowest > sweepBound {
		t.Errorf("an answer took %s", l.slowest)
	}
	acked := l.acked
	l.mu.Unlock()
	for _, w := range wrong {
		t.Error(w)
	}
	time.Sleep(5 * time.Second) // GC passes on the recovered cluster
	for ref, im := range acked {
		for _, r := range c.replicas {
			resp := do(t, http.MethodGet, r.url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, map[string]string{"Accept": ociManifest})
			if got := blobDigest(readAll(t, resp)); resp.StatusCode != http.StatusOK || got != im.digest {
				t.Errorf("acknowledged %s: %s %s, want %s", ref, resp.Status, got, im.digest)
			}
		}
		checkImage(t, c.replicas[1], ref[0], ref[1], "after the S3 restarts")
	}
	for d := range fills {
		for _, r := range c.replicas {
			resp := do(t, http.MethodGet, r.url("/v2/docker.io/library/fill/blobs/"+d), nil, nil)
			if b := readAll(t, resp); resp.StatusCode != http.StatusOK || blobDigest(b) != d {
				t.Errorf("mirrored %s after the restarts: %s, %d bytes", d, resp.Status, len(b))
			}
		}
	}
	for i, r := range c.replicas {
		select {
		case <-r.done:
			t.Errorf("replica %d exited during the drill", i)
		default:
		}
	}
}
