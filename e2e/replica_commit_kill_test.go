package e2e

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestReplicaKillMidCommit: a chunked push's closing PUT (the multipart
// upload's completion, the blob's record and link) sent to one replica,
// which is killed (SIGKILL) 0-150 ms later, four times. The client
// then sends the PUT again to the other replica, as a client retries
// through a load balancer. Before and after the retry the blob is never
// half-visible (HEAD 404, or 200 and the GET whole); the retry commits
// (201), or finds the session gone because the first PUT committed
// before the kill (404 BLOB_UPLOAD_UNKNOWN, and the blob is whole), or
// is sent again after a 416 or a 503 with Retry-After (S3 still busy with the dead
// replica's request); and every blob ends whole through both replicas.
// Before, a retry after a first PUT that had completed the multipart
// upload answered 404 with the blob absent: the push was lost.
func TestReplicaKillMidCommit(t *testing.T) {
	c := startCluster(t, 2, "", nil)
	outcomes := map[string]int{}
	var slowest time.Duration
	retries := map[int]int{} // answers the client waited out and sent again
	for round := range 4 {
		a, b := c.replicas[round%2], c.replicas[(round+1)%2]
		repo := fmt.Sprintf("commit/r%d", round)
		data := randomBytes(t, 12<<20+round)
		d := blobDigest(data)
		put := chunkedUntilCommit(t, a, repo, data)

		first := make(chan int, 1)
		go func() { first <- churnStatus(http.MethodPut, a.url(put)) }()
		time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
		a.kill()
		st := <-first
		checkNotHalf(t, b, repo, d, data, "after the kill mid-commit")

		retry := 0
		start := time.Now()
		deadline := start.Add(30 * time.Second)
		for {
			retry = commitStatus(b.url(put))
			again := retry == http.StatusRequestedRangeNotSatisfiable || retry == http.StatusServiceUnavailable
			if !again || time.Now().After(deadline) {
				break
			}
			retries[retry]++
			time.Sleep(500 * time.Millisecond)
		}
		slowest = max(slowest, time.Since(start))
		outcome := fmt.Sprintf("first %d, retry %d", st, retry)
		outcomes[outcome]++
		switch retry {
		case http.StatusCreated:
		case http.StatusNotFound:
			// The first PUT committed; its answer died with the replica.
			headBlob(t, b, repo, d, http.StatusOK, "a retry that found its session gone")
		default:
			t.Errorf("round %d: %s", round, outcome)
		}
		a.start()
		for _, s := range c.replicas {
			getBlob(t, s, repo, d, data)
		}
	}
	t.Logf("kills mid-commit: %v; answers sent again: %v; slowest retry %s", outcomes, retries, slowest.Round(time.Millisecond))
}

// churnStatus sends a bodiless request and returns its status, 0 when no
// answer came (the replica died).
func churnStatus(method, u string) int {
	st, _ := churnDo(method, u, nil, "")
	return st
}

// commitStatus sends a closing PUT with a client as patient as docker's
// (a commit may wait out a dead replica's lease on its session, 15 s).
func commitStatus(u string) int {
	req, err := http.NewRequest(http.MethodPut, u, nil)
	if err != nil {
		return 0
	}
	resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// checkNotHalf: blob d in repo is absent (HEAD 404) or whole.
func checkNotHalf(t *testing.T, s *server, repo, d string, want []byte, when string) {
	t.Helper()
	switch st := status(http.MethodHead, s.url("/v2/"+repo+"/blobs/"+d)); st {
	case http.StatusNotFound:
	case http.StatusOK:
		resp := do(t, http.MethodGet, s.url("/v2/"+repo+"/blobs/"+d), nil, nil)
		if got := readAll(t, resp); resp.StatusCode != http.StatusOK || !bytes.Equal(got, want) {
			t.Errorf("%s: HEAD 200 but GET %s with %d bytes", when, resp.Status, len(got))
		}
	default:
		t.Errorf("%s: HEAD %d", when, st)
	}
}

// chunkedUntilCommit pushes data to repo through s in 6 MiB PATCHes and
// returns the path of the closing PUT, not sent.
func chunkedUntilCommit(t *testing.T, s *server, repo string, data []byte) (put string) {
	t.Helper()
	resp := do(t, http.MethodPost, s.url("/v2/"+repo+"/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	loc := uploadPath(t, resp.Header.Get("Location"))
	for off := 0; off < len(data); off += 6 << 20 {
		end := min(off+6<<20, len(data))
		resp = do(t, http.MethodPatch, s.url(loc), data[off:end], map[string]string{
			"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", off, end-1)})
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("PATCH: %s", resp.Status)
		}
		loc = uploadPath(t, resp.Header.Get("Location"))
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	return loc + sep + "digest=" + url.QueryEscape(blobDigest(data))
}
