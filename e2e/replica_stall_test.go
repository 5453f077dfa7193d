//go:build linux

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// stallBound is how long a request may wait on a hung backend before it
// must have its answer: the registry gives up on the backend first.
const stallBound = 45 * time.Second

// TestReplicaS3Stalled: the S3 server hangs (SIGSTOP: connections open,
// nothing answers) under a replica. Blob reads and pushes that need it
// answer 503 with Retry-After within stallBound instead of hanging as
// long as their clients wait; once it continues (SIGCONT) the same
// process serves and takes blobs again, and the goroutines and file
// descriptors the stalled requests held are given back.
func TestReplicaS3Stalled(t *testing.T) {
	c := startCluster(t, 1, "", nil)
	r := c.replicas[0]
	blob := randomBytes(t, 1<<20)
	d := pushBlob(t, r, "stall/app", blob)
	getBlob(t, r, "stall/app", d, blob)
	baseFDs, baseG := fdCount(t, r), goroutines(t, r)

	if err := c.s3.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = c.s3.Resume()
		}
	}()
	small := make([][]byte, 4)
	for i := range small {
		small[i] = randomBytes(t, 64<<10)
	}
	var reqs []stalledRequest
	for i := range 10 {
		reqs = append(reqs, stalledRequest{fmt.Sprintf("GET blob %d", i), http.MethodGet, r.url("/v2/stall/app/blobs/" + d), nil})
	}
	for i, b := range small {
		reqs = append(reqs, stalledRequest{fmt.Sprintf("monolithic push %d", i), http.MethodPost,
			r.url("/v2/stall/app/blobs/uploads/?digest=" + blobDigest(b)), b})
	}
	wantUnavailableWithin(t, reqs, "S3 hung")

	if err := c.s3.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	getBlob(t, r, "stall/app", d, blob)
	after := randomBytes(t, 1<<20)
	getBlob(t, r, "stall/app", pushBlob(t, r, "stall/app", after), after)
	waitFor(t, 30*time.Second, "the stalled requests' goroutines and fds to go", func() bool {
		return fdCount(t, r) <= baseFDs+10 && goroutines(t, r) <= baseG+20
	})
	r.alive("after S3 hung")
}

// stalledRequest is one request a stall drill sends.
type stalledRequest struct {
	what, method, url string
	body              []byte
}

// wantUnavailableWithin sends reqs at once and checks that each gets 503
// with Retry-After within stallBound.
func wantUnavailableWithin(t *testing.T, reqs []stalledRequest, when string) {
	t.Helper()
	type answer struct {
		status int
		took   time.Duration
		err    error
	}
	answers := make([]answer, len(reqs))
	var wg sync.WaitGroup
	for i, q := range reqs {
		wg.Go(func() {
			start := time.Now()
			req, _ := http.NewRequest(q.method, q.url, bytes.NewReader(q.body))
			req.Header.Set("Content-Type", "application/octet-stream")
			req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
			resp, err := (&http.Client{Timeout: 2 * stallBound}).Do(req)
			a := answer{took: time.Since(start), err: err}
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				a.status = resp.StatusCode
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") == "" {
					a.err = fmt.Errorf("503 without Retry-After")
				}
			}
			answers[i] = a
		})
	}
	wg.Wait()
	for i, a := range answers {
		t.Logf("%s with %s: %d after %s (%v)", reqs[i].what, when, a.status, a.took.Round(time.Millisecond), a.err)
		if a.err != nil || a.status != http.StatusServiceUnavailable || a.took > stallBound {
			t.Errorf("%s with %s: status %d after %s (%v); want 503 with Retry-After within %s",
				reqs[i].what, when, a.status, a.took.Round(time.Second), a.err, stallBound)
		}
	}
}

func getBlob(t *testing.T, s *server, repo, d string, want []byte) {
	t.Helper()
	resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil)
	if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
		t.Fatalf("GET blob %s: %s, %d bytes", d, resp.Status, len(got))
	}
}

// fdCount is the number of file descriptors the server's process holds.
func fdCount(t *testing.T, s *server) int {
	t.Helper()
	es, err := os.ReadDir("/proc/" + strconv.Itoa(s.cmd.Process.Pid) + "/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// goroutines is the server's go_goroutines metric.
func goroutines(t *testing.T, s *server) int {
	t.Helper()
	resp, err := http.Get("http://" + s.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "go_goroutines "); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatalf("go_goroutines %q", v)
			}
			return n
		}
	}
	t.Fatal("/metrics has no go_goroutines")
	return 0
}

// TestReplicaPostgresStalled: the same with PostgreSQL hung (every
// process stopped): a manifest read and an upload start answer 503 within
// stallBound, and the same process serves again once it continues.
func TestReplicaPostgresStalled(t *testing.T) {
	crane := tool(t, "crane")
	c := startCluster(t, 1, "", nil)
	r := c.replicas[0]
	before := pushImage(t, crane, r, "stall/pg:before")
	baseFDs, baseG := fdCount(t, r), goroutines(t, r)

	if err := c.pg.Pause(); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = c.pg.Resume()
		}
	}()
	var reqs []stalledRequest
	for i := range 10 {
		reqs = append(reqs, stalledRequest{fmt.Sprintf("manifest GET %d", i), http.MethodGet, r.url("/v2/stall/pg/manifests/before"), nil})
	}
	for i := range 4 {
		reqs = append(reqs, stalledRequest{fmt.Sprintf("upload start %d", i), http.MethodPost, r.url("/v2/stall/pg/blobs/uploads/"), nil})
	}
	wantUnavailableWithin(t, reqs, "PostgreSQL hung")

	if err := c.pg.Resume(); err != nil {
		t.Fatal(err)
	}
	resumed = true
	checkRecovered(t, c, crane, before, "stall/pg:after")
	waitFor(t, 30*time.Second, "the stalled requests' goroutines and fds to go", func() bool {
		return fdCount(t, r) <= baseFDs+10 && goroutines(t, r) <= baseG+20
	})
}
