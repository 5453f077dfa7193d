//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestReplicaPostgresStalledUnderLoad and TestReplicaS3StalledUnderLoad:
// PostgreSQL (every process) or the S3 server stopped (SIGSTOP) for 20 s
// while eight clients push images and pull them on two replicas without
// pause. Every request ends (the wanted answer, or 503 with Retry-After)
// within stallBound; the replicas' goroutines stay bounded while their
// storage hangs; the first push after SIGCONT succeeds within seconds,
// without a restart; and every acknowledged image is whole afterwards.
func TestReplicaPostgresStalledUnderLoad(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	stallUnderLoad(t, c, "PostgreSQL", c.pg.Pause, c.pg.Resume)
}

func TestReplicaS3StalledUnderLoad(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	stallUnderLoad(t, c, "S3", c.s3.Pause, c.s3.Resume)
}

func stallUnderLoad(t *testing.T, c *replicaCluster, what string, pause, resume func() error) {
	const stall = 20 * time.Second
	tally := &netcutTally{answers: map[string]int{}}
	var mu sync.Mutex
	acked := map[string]churnImage{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var rounds atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				r := c.replicas[(w+i)%2]
				rounds.Add(1)
				if w%2 == 1 { // pull what was acknowledged
					mu.Lock()
					var ref string
					var im churnImage
					for ref, im = range acked {
						break
					}
					mu.Unlock()
					if ref == "" {
						time.Sleep(20 * time.Millisecond)
						continue
					}
					repo, _, _ := strings.Cut(ref, ":")
					ok, _, got := tally.send(http.MethodGet, r.url("/v2/"+repo+"/blobs/"+blobDigest(im.layer)), nil, nil, http.StatusOK)
					if ok && !bytes.Equal(got, im.layer) {
						tally.wrong("GET %s: other bytes", blobDigest(im.layer))
					}
					continue
				}
				im := newChurnImage(t)
				repo, tag := fmt.Sprintf("stall/w%d", w), fmt.Sprintf("v%d", i)
				ok := true
				for _, b := range [][]byte{im.config, im.layer} {
					got, _, _ := tally.send(http.MethodPost, r.url("/v2/"+repo+"/blobs/uploads/?digest="+blobDigest(b)), b,
						map[string]string{"Content-Type": "application/octet-stream"}, http.StatusCreated)
					ok = ok && got
				}
				if ok {
					ok, _, _ = tally.send(http.MethodPut, r.url("/v2/"+repo+"/manifests/"+tag), im.manifest,
						map[string]string{"Content-Type": ociManifest}, http.StatusCreated)
				}
				if ok {
					mu.Lock()
					acked[repo+":"+tag] = im
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(3 * time.Second)
	baseG := []int{goroutines(t, c.replicas[0]), goroutines(t, c.replicas[1])}
	if err := pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = resume()
		}
	}()
	peakG := append([]int(nil), baseG...)
	for end := time.Now().Add(stall); time.Now().Before(end); time.Sleep(500 * time.Millisecond) {
		for i, r := range c.replicas {
			peakG[i] = max(peakG[i], goroutines(t, r))
		}
	}
	if err := resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	back := time.Now()
	// The first push through each replica after SIGCONT.
	for i, r := range c.replicas {
		b := randomBytes(t, 64<<10)
		waitFor(t, 60*time.Second, "a push after "+what+" continued", func() bool {
			st, _ := churnDo(http.MethodPost, r.url("/v2/stall/after/blobs/uploads/?digest="+blobDigest(b)), b, "application/octet-stream")
			return st == http.StatusCreated
		})
		t.Logf("replica %d: first push %s after %s continued", i, time.Since(back).Round(time.Millisecond), what)
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%s stopped %s under load: %d requests, answers %s, slowest %s; goroutines before %v, peak while stopped %v",
		what, stall, rounds.Load(), tally, tally.slowest.Round(time.Millisecond), baseG, peakG)
	for _, b := range tally.bad {
		t.Error(b)
	}
	if tally.slowest > stallBound {
		t.Errorf("slowest answer %s, past %s", tally.slowest, stallBound)
	}
	for i := range peakG {
		if peakG[i] > baseG[i]+200 {
			t.Errorf("replica %d: %d goroutines while %s was stopped, %d before", i, peakG[i], what, baseG[i])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for ref := range acked {
		repo, tag, _ := strings.Cut(ref, ":")
		checkImage(t, c.replicas[0], repo, tag, "after "+what+" continued")
	}
	t.Logf("%d acknowledged images whole", len(acked))
	for _, r := range c.replicas {
		r.alive("after " + what + " was stopped")
	}
}
