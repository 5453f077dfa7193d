package e2e

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"
)

// TestReplicaPostgresCrashMidFill crashes PostgreSQL (-m immediate)
// while two replicas pull one cold mirrored blob, one filling it, the
// other waiting on the fill's lease. Pulls meanwhile end with the blob or
// an error answer, none hangs; once PostgreSQL is back, both replicas
// serve the blob whole within seconds: a fill whose holder is done but
// could not release its lease (PostgreSQL was down) releases it once
// PostgreSQL is back, rather than leaving every replica's pulls of that
// blob waiting for the lease to expire (30s).
func TestReplicaPostgresCrashMidFill(t *testing.T) {
	needBinary(t)
	blob := randomBytes(t, 8<<20)
	up, d := slowBlobUpstream(t, blob, 256<<10, 100*time.Millisecond) // about 3s
	c := startCluster(t, 2, "\t\tmirror docker.io {\n\t\t\tupstream "+up.URL+"\n\t\t}\n", nil)
	path := "/v2/docker.io/library/app/blobs/" + d

	type result struct {
		status string
		whole  bool
		took   time.Duration
	}
	var mu sync.Mutex
	var results []result
	var wg sync.WaitGroup
	pull := func(s *server) {
		defer wg.Done()
		start := time.Now()
		r := result{status: "no answer"}
		resp, err := (&http.Client{Timeout: 2 * time.Minute}).Get(s.url(path))
		if err == nil {
			b, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.status = resp.Status
			r.whole = rerr == nil && bytes.Equal(b, blob)
		}
		r.took = time.Since(start)
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}
	wg.Add(4)
	go pull(c.replicas[0])
	time.Sleep(300 * time.Millisecond)
	go pull(c.replicas[1])
	go pull(c.replicas[0])
	go pull(c.replicas[1])
	time.Sleep(700 * time.Millisecond)
	if err := c.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	wg.Wait()
	for _, r := range results {
		t.Logf("pull during the crash: %s, whole %v, after %s", r.status, r.whole, r.took.Round(time.Millisecond))
		if r.took > time.Minute {
			t.Errorf("a pull during the crash took %s", r.took)
		}
	}
	for i, r := range c.replicas {
		var got []byte
		waitFor(t, 10*time.Second, "the blob to be served again", func() bool {
			resp, err := (&http.Client{Timeout: 10 * time.Second}).Get(r.url(path))
			if err != nil {
				return false
			}
			defer resp.Body.Close()
			got, _ = io.ReadAll(resp.Body)
			return resp.StatusCode == http.StatusOK && bytes.Equal(got, blob)
		})
		t.Logf("replica %d serves the blob whole %s after PostgreSQL was back", i, time.Since(back).Round(100*time.Millisecond))
	}
}
