package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestKillLoopUnderWrites kills the single-node server with SIGKILL ten
// times in a row while sixteen clients push images as fast as they can
// (badger writing all the while). The store opens after every kill, and
// every manifest answered 201 before any kill is still there, whole.
func TestKillLoopUnderWrites(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := siteServer(t, dataDir, "\toci_registry {\n\t\tstorage "+strconv.Quote(dataDir)+"\n\t\tgc_interval 1s\n\t\tgc_grace 30s\n\t}", 0)
	type ack struct {
		repo, tag, digest string
	}
	var (
		mu    sync.Mutex
		acked []ack
	)
	for round := range 10 {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					im := newChurnImage(t)
					repo := fmt.Sprintf("loop/w%d", w)
					tag := fmt.Sprintf("r%d-%d", round, n)
					if im.pushBlobs(s, repo) && im.putManifest(s, repo, tag) {
						mu.Lock()
						acked = append(acked, ack{repo, tag, im.digest})
						mu.Unlock()
					}
				}
			}()
		}
		time.Sleep(time.Duration(300+rand.IntN(1200)) * time.Millisecond)
		s.kill()
		close(stop)
		wg.Wait()
		start := time.Now()
		s.start()
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		t.Logf("kill %d: reopened in %s, %d manifests acknowledged so far", round+1, time.Since(start).Round(time.Millisecond), n)
	}
	missing := 0
	for _, a := range acked {
		if st := status(http.MethodHead, s.url("/v2/"+a.repo+"/manifests/"+a.digest)); st != http.StatusOK {
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged %s:%s (%s) answers %d after the kills", a.repo, a.tag, a.digest, st)
			}
		}
	}
	for i := 0; i < len(acked); i += max(1, len(acked)/50) {
		checkImage(t, s, acked[i].repo, acked[i].tag, "after ten kills")
	}
	if n := churn5xx.Load(); n > 0 {
		t.Errorf("%d answers were 5xx, e.g. %v", n, churnSample.Load())
	}
	t.Logf("%d acknowledged manifests checked, %d missing", len(acked), missing)
}
