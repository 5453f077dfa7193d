package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestReplicaPostgresRestartMidDeletes restarts PostgreSQL twice, cleanly
// (pg_ctl -m fast) and as a crash (-m immediate), while six clients push
// images with two tags each across two replicas and then delete one tag,
// or the manifest by digest. Every answer is a success or 503 with
// Retry-After; afterwards every acknowledged delete stays deleted (the
// tag, or the digest and every tag on it: 404 on both replicas), and
// every tag acknowledged and not deleted is there with its manifest.
func TestReplicaPostgresRestartMidDeletes(t *testing.T) {
	needBinary(t)
	c := startCluster(t, 2, drillGC, nil)
	l := &pgLoad{statuses: map[string]int{}, acked: map[[2]string]churnImage{}}
	var mu sync.Mutex
	goneTags := map[[2]string]bool{}    // {repo, tag}: delete acknowledged (false: asked, not acknowledged)
	goneDigests := map[[2]string]bool{} // {repo, digest}: delete acknowledged
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			repo := "drill/pgd" + strconv.Itoa(w)
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				r := c.replicas[(w+n)%2]
				im := newChurnImage(t)
				if !l.pushBlobs(r, repo, im) {
					continue
				}
				tags := []string{"t" + strconv.Itoa(n), "u" + strconv.Itoa(n)}
				for _, tag := range tags {
					if l.do(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest, ociManifest) == http.StatusCreated {
						l.mu.Lock()
						l.acked[[2]string{repo, tag}] = im
						l.mu.Unlock()
					}
				}
				r = c.replicas[(w+n+1)%2] // the other replica deletes
				gone := tags[:1]
				u := r.url("/v2/" + repo + "/manifests/" + tags[0])
				if n%2 == 1 {
					gone, u = tags, r.url("/v2/"+repo+"/manifests/"+im.digest)
				}
				st := l.do(http.MethodDelete, u, nil, "")
				mu.Lock()
				for _, tag := range gone {
					// A delete refused while PostgreSQL went away may have
					// committed all the same: its tags are not checked.
					goneTags[[2]string{repo, tag}] = st == http.StatusAccepted
				}
				if n%2 == 1 && st == http.StatusAccepted {
					goneDigests[[2]string{repo, im.digest}] = true
				}
				mu.Unlock()
			}
		}()
	}
	l.outage(t, "PostgreSQL", "pg_ctl stop -m fast", c.pg.Stop, c.pg.Start)
	l.outage(t, "PostgreSQL", "pg_ctl stop -m immediate", c.pg.Kill, c.pg.Start)
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()

	l.mu.Lock()
	defer l.mu.Unlock()
	keys := make([]string, 0, len(l.statuses))
	for k := range l.statuses {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	summary := ""
	for _, k := range keys {
		summary += fmt.Sprintf(" %s:%d", k, l.statuses[k])
	}
	t.Logf("answers:%s; %d tags acknowledged, %d digest deletes acknowledged", summary, len(l.acked), len(goneDigests))
	for _, b := range l.bad {
		t.Errorf("neither success nor 503 with Retry-After: %s", b)
	}
	for _, r := range c.replicas {
		for ref := range goneDigests {
			if resp := do(t, http.MethodGet, r.url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, map[string]string{"Accept": ociManifest}); resp.StatusCode != http.StatusNotFound {
				t.Errorf("manifest %s deleted (202) but answers %s", ref, resp.Status)
			}
		}
		for ref, im := range l.acked {
			resp := do(t, http.MethodGet, r.url("/v2/"+ref[0]+"/manifests/"+ref[1]), nil, map[string]string{"Accept": ociManifest})
			body := readAll(t, resp)
			gone, asked := goneTags[ref]
			switch {
			case asked && !gone:
			case gone:
				if resp.StatusCode != http.StatusNotFound {
					t.Errorf("tag %s deleted (202) but answers %s", ref, resp.Status)
				}
			case resp.StatusCode != http.StatusOK || blobDigest(body) != im.digest:
				t.Errorf("tag %s acknowledged (201) and not deleted: %s %s, want %s", ref, resp.Status, blobDigest(body), im.digest)
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
