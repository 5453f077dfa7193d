package e2e

import (
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestReplicaRestartUnderCrowd is TestReplicaPostgresRestartUnderLoad
// with two hundred clients instead of eight (every connection of both
// replicas' pools busy and dead at once): PostgreSQL crashed (pg_ctl -m
// immediate), or the S3 server killed, and started again 3 s later.
// Every answer is a success or 503 with Retry-After within the clients'
// bound, the replicas serve again within seconds of the store's return,
// and every manifest answered 201 is there afterwards.
func TestReplicaRestartUnderCrowd(t *testing.T) {
	t.Run("PostgreSQL", func(t *testing.T) {
		c := startCluster(t, 2, drillGC, nil)
		restartUnderCrowd(t, c, "PostgreSQL", c.pg.Kill, c.pg.Start)
	})
	t.Run("S3", func(t *testing.T) {
		c := startCluster(t, 2, drillGC, nil)
		restartUnderCrowd(t, c, "S3", func() error { c.s3.Kill(); return nil }, func() error { c.s3.Restart(t); return nil })
	})
}

func restartUnderCrowd(t *testing.T, c *replicaCluster, store string, down, up func() error) {
	l := &pgLoad{statuses: map[string]int{}, acked: map[[2]string]churnImage{}}
	seed := newChurnImage(t)
	if !l.pushBlobs(c.replicas[0], "crowd/seed", seed) || l.do(http.MethodPut, c.replicas[0].url("/v2/crowd/seed/manifests/v1"), seed.manifest, ociManifest) != http.StatusCreated {
		t.Fatal("seeding failed")
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 200 {
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
				if w%5 != 0 { // pulls
					l.do(http.MethodGet, r.url("/v2/crowd/seed/manifests/v1"), nil, "")
					l.do(http.MethodHead, r.url("/v2/crowd/seed/blobs/"+blobDigest(seed.layer)), nil, "")
					time.Sleep(20 * time.Millisecond)
					continue
				}
				repo, tag := "crowd/w"+strconv.Itoa(w), "t"+strconv.Itoa(n)
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
		}()
	}
	l.outage(t, store, "a kill under 200 clients", down, up)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	l.mu.Lock()
	t.Logf("answers: %v; slowest %s; %d manifests acknowledged", l.statuses, l.slowest.Round(time.Millisecond), len(l.acked))
	for _, b := range l.bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	if l.slowest > sweepBound {
		t.Errorf("an answer took %s", l.slowest)
	}
	acked := l.acked
	l.mu.Unlock()
	for ref, im := range acked {
		resp := do(t, http.MethodGet, c.replicas[1].url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, map[string]string{"Accept": ociManifest})
		if got := blobDigest(readAll(t, resp)); resp.StatusCode != http.StatusOK || got != im.digest {
			t.Errorf("acknowledged %s: %s %s, want %s", ref, resp.Status, got, im.digest)
		}
	}
	for i, r := range c.replicas {
		r.alive(fmt.Sprintf("replica %d after the crash", i))
	}
}
