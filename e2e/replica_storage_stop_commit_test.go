//go:build linux

package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"
)

// TestReplicaStorageStoppedMidCommit: the S3 server, or PostgreSQL, is
// stopped (SIGSTOP) 0-60 ms into the closing PUT of a chunked push, for
// 20 s. That PUT answers 503 (or 201, had it finished) within
// stallBound, never another 5xx (before: with S3 stopped while the last
// part went up, no answer after 50 s: that part's bound, 30 s plus 96 s
// for its 6 MiB at minTransferRate, ran on as loopback's buffers had
// taken the whole part); after SIGCONT the client sends the PUT
// again, to the other replica, and it is acknowledged (or, had the first
// PUT finished its commit after all, the session is gone and the blob is
// there whole); the blob is whole through both replicas.
func TestReplicaStorageStoppedMidCommit(t *testing.T) {
	for _, what := range []string{"S3", "PostgreSQL"} {
		t.Run(what, func(t *testing.T) {
			c := startCluster(t, 2, "", nil)
			stop, cont := c.s3.Pause, c.s3.Resume
			if what == "PostgreSQL" {
				stop, cont = c.pg.Pause, c.pg.Resume
			}
			outcomes := map[string]int{}
			for round := range 2 {
				a, b := c.replicas[round%2], c.replicas[(round+1)%2]
				repo := fmt.Sprintf("storestop/r%d", round)
				data := randomBytes(t, 12<<20+round)
				d := blobDigest(data)
				put := chunkedUntilCommit(t, a, repo, data)

				first := make(chan int, 1)
				start := time.Now()
				go func() { first <- commitStatus(a.url(put)) }()
				time.Sleep(time.Duration(rand.IntN(60)) * time.Millisecond)
				if err := stop(); err != nil {
					t.Fatal(err)
				}
				var st int
				select {
				case st = <-first:
				case <-time.After(stallBound + 5*time.Second):
					a.logGoroutines(t)
					_ = cont()
					t.Fatalf("round %d: the PUT had no answer %s into the stop", round, stallBound+5*time.Second)
				}
				took := time.Since(start)
				time.Sleep(max(0, 20*time.Second-took))
				if err := cont(); err != nil {
					t.Fatal(err)
				}
				if st != http.StatusCreated && st != http.StatusServiceUnavailable {
					t.Errorf("round %d: the PUT during the stop: %d after %s", round, st, took.Round(time.Millisecond))
				}
				retry := 0
				if st != http.StatusCreated {
					deadline := time.Now().Add(30 * time.Second)
					for {
						retry = commitStatus(b.url(put))
						again := retry == http.StatusServiceUnavailable || retry == http.StatusRequestedRangeNotSatisfiable
						if !again || time.Now().After(deadline) {
							break
						}
						time.Sleep(500 * time.Millisecond)
					}
					if retry != http.StatusCreated && retry != http.StatusNotFound {
						t.Errorf("round %d: the PUT sent again after SIGCONT: %d", round, retry)
					}
				}
				outcomes[fmt.Sprintf("%d then %d", st, retry)]++
				t.Logf("round %d: the PUT during the stop answered %d after %s", round, st, took.Round(100*time.Millisecond))
				for _, s := range c.replicas {
					getBlob(t, s, repo, d, data)
				}
			}
			t.Logf("commits with %s stopped: %v", what, outcomes)
			for _, s := range c.replicas {
				s.alive("after the storage was stopped mid-commit")
			}
		})
	}
}
