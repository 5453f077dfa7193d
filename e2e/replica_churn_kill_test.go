package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReplicaKillDuringMetadataChurn is TestKillDuringMetadataChurn on
// two replicas (S3 and PostgreSQL): clients move a tag, push and delete
// manifests and mount blobs across repositories on both replicas, both
// replicas reload their config at the same moment over and over, GC runs
// every second with a 3 s grace, and one replica in turn is killed
// (SIGKILL) three times. After each restart, and after GC had time to
// collect on the restarted cluster: every tag resolves to a manifest
// whose blobs are all there and hash right, through either replica;
// every acknowledged tag holds what it was last set to (or a later ask);
// every acknowledged DELETE stays deleted; and the survivor never
// answered 5xx.
func TestReplicaKillDuringMetadataChurn(t *testing.T) {
	c := startCluster(t, 2, "\t\tgc_interval 1s\n\t\tgc_grace 3s\n", nil)
	churn5xx.Store(0)
	first := c.replicas[0]
	base := make([]churnImage, 4)
	for i := range base {
		base[i] = newChurnImage(t)
		if !base[i].pushBlobs(first, "team/base") || !base[i].putManifest(first, "team/base", "v"+strconv.Itoa(i)) {
			t.Fatal("seeding team/base failed")
		}
	}
	ledger := &churnLedger{tags: map[string]*tagAsks{}, deleted: map[string]bool{}}
	for i := range base {
		ledger.asked("team/base:v"+strconv.Itoa(i), base[i].digest)
		ledger.acked("team/base:v"+strconv.Itoa(i), base[i].digest)
	}
	caddyfiles := make([][]byte, len(c.replicas))
	for i, r := range c.replicas {
		b, err := os.ReadFile(r.config)
		if err != nil {
			t.Fatal(err)
		}
		caddyfiles[i] = b
	}

	reloads := 0
	var collectable sync.Map // layers only deleted manifests held, GC's to take
	for round := range 3 {
		victim, survivor := c.replicas[round%2], c.replicas[(round+1)%2]
		stop := make(chan struct{})
		var wg sync.WaitGroup
		worker := func(f func(s *server, n int)) {
			wg.Go(func() {
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					f(c.replicas[n%2], n)
				}
			})
		}
		worker(func(s *server, n int) { // tag moves
			im := base[n%len(base)]
			ledger.asked("team/base:moving", im.digest)
			if im.putManifest(s, "team/base", "moving") {
				ledger.acked("team/base:moving", im.digest)
			}
		})
		worker(func(s *server, n int) { // push, then delete the manifest
			im := newChurnImage(t)
			repo := "team/tmp" + strconv.Itoa(round)
			ref := repo + ":t" + strconv.Itoa(n)
			if !im.pushBlobs(s, repo) {
				return
			}
			ledger.asked(ref, im.digest)
			if !im.putManifest(s, repo, "t"+strconv.Itoa(n)) {
				return
			}
			ledger.acked(ref, im.digest)
			if n%2 == 0 {
				return // kept
			}
			// The delete goes to the other replica than the push.
			other := c.replicas[(n+1)%2]
			deleted := ledger.deleting(ref, repo, im.digest)
			if st, _ := churnDo(http.MethodDelete, other.url("/v2/"+repo+"/manifests/"+im.digest), nil, ""); st == http.StatusAccepted {
				deleted()
				collectable.Store(blobDigest(im.layer), true)
			}
		})
		worker(func(s *server, n int) { // cross-repository mounts
			im := base[n%len(base)]
			repo := fmt.Sprintf("team/m%d-%d", round, n%40)
			for _, b := range [][]byte{im.config, im.layer} {
				st, _ := churnDo(http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/?mount="+blobDigest(b)+"&from=team/base"), nil, "")
				if st != http.StatusCreated {
					return
				}
			}
			ledger.asked(repo+":v", im.digest)
			if im.putManifest(s, repo, "v") {
				ledger.acked(repo+":v", im.digest)
			}
		})
		wg.Go(func() { // both replicas reload at the same moment
			for {
				select {
				case <-stop:
					return
				case <-time.After(300 * time.Millisecond):
				}
				var both sync.WaitGroup
				for i, r := range c.replicas {
					both.Go(func() { reloadQuietly(r, caddyfiles[i]) })
				}
				both.Wait()
				reloads++
			}
		})
		time.Sleep(time.Duration(1500+rand.IntN(1500)) * time.Millisecond)
		victim.kill()
		// The survivor works on alone a while: the victim's leases
		// (GC's among them) are left to expire.
		time.Sleep(2 * time.Second)
		close(stop)
		wg.Wait()
		victim.start()
		for _, s := range []*server{survivor, victim} {
			checkChurn(t, s, ledger, fmt.Sprintf("after kill %d, through %s", round+1, s.addr))
		}
		if t.Failed() {
			return
		}
	}
	if n := churn5xx.Load(); n > 0 {
		t.Errorf("%d answers were 5xx, e.g. %v", n, churnSample.Load())
	}
	t.Logf("%d reloads of both replicas at once", reloads)
	// GC collects what the deleted manifests held, once the lease of a
	// killed leader expired (30 s) and the grace passed.
	left, atEnd := 0, -1
	start := time.Now()
	waitFor(t, 90*time.Second, "GC to collect the deleted manifests' layers", func() bool {
		objects, _ := c.s3.Keys(t, c.bucket, "registry/blobs/")
		in := map[string]bool{}
		for _, o := range objects {
			in["sha256:"+o[strings.LastIndex(o, "/")+1:]] = true
		}
		left = 0
		collectable.Range(func(d, _ any) bool {
			if in[d.(string)] {
				left++
			}
			return true
		})
		if atEnd < 0 {
			atEnd = left
			if !in[blobDigest(base[0].layer)] {
				t.Fatalf("a tagged image's layer is not under registry/blobs/ in the bucket: the check looks in the wrong place")
			}
		}
		return left == 0
	})
	t.Logf("GC collected the deleted manifests' layers (%d in the bucket when the drill ended) %s after it", atEnd, time.Since(start).Round(time.Second))
	for _, s := range c.replicas {
		checkChurn(t, s, ledger, "after GC ran on the restarted cluster")
	}
}

// reloadQuietly posts caddyfile to s's admin API; a replica being killed
// does not answer, which is no failure here.
func reloadQuietly(s *server, caddyfile []byte) {
	req, _ := http.NewRequest(http.MethodPost, "http://"+s.admin+"/load", bytes.NewReader(caddyfile))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	if resp, err := churnClient.Do(req); err == nil {
		resp.Body.Close()
	}
}
