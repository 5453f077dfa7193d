package e2e

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReplicaPostgresCrashMidChunkedPush: a chunked push whose chunk
// is arriving when PostgreSQL crashes (-m immediate) gets a 503; once PostgreSQL is back, the client asks the session's
// offset and resumes there, on either replica, at once (the session's
// lease does not keep it waiting), and the blob commits whole.
func TestReplicaPostgresCrashMidChunkedPush(t *testing.T) {
	needBinary(t)
	c := startCluster(t, 2, "", nil)
	a, b := c.replicas[0], c.replicas[1]
	blob := randomBytes(t, 12<<20)
	const chunk = 4 << 20
	resp := do(t, http.MethodPost, a.url("/v2/drill/chunked/blobs/uploads/"), nil, nil)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST: %s", resp.Status)
	}
	loc := location(t, a, resp).RequestURI()
	patch := func(s *server, off int) *http.Response {
		end := min(off+chunk, len(blob))
		return do(t, http.MethodPatch, s.url(loc), blob[off:end], map[string]string{
			"Content-Type": "application/octet-stream", "Content-Range": fmt.Sprintf("%d-%d", off, end-1)})
	}
	if resp := patch(a, 0); resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk: %s", resp.Status)
	}
	// The second chunk's body is on its way (the session's lease taken)
	// when PostgreSQL crashes.
	pr, pw := io.Pipe()
	answered := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPatch, a.url(loc), pr)
		req.ContentLength = chunk
		req.Header.Set("Content-Type", "application/octet-stream")
		req.Header.Set("Content-Range", fmt.Sprintf("%d-%d", chunk, 2*chunk-1))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- nil
			return
		}
		resp.Body.Close()
		answered <- resp
	}()
	if _, err := pw.Write(blob[chunk : chunk+chunk/2]); err != nil {
		t.Fatal(err)
	}
	if err := c.pg.Kill(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	go func() {
		_, _ = pw.Write(blob[chunk+chunk/2 : 2*chunk])
		pw.Close()
	}()
	if resp := <-answered; resp != nil {
		t.Logf("second chunk, PostgreSQL crashed mid-body: %s after %s", resp.Status, time.Since(start).Round(time.Millisecond))
		if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusAccepted {
			t.Errorf("second chunk, PostgreSQL crashed mid-body: %s", resp.Status)
		}
	}
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// The client asks where the session stands, then resumes there.
	var off int
	waitFor(t, 10*time.Second, "the session's status", func() bool {
		resp := do(t, http.MethodGet, b.url(loc), nil, nil)
		if resp.StatusCode != http.StatusNoContent {
			return false
		}
		_, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &off)
		off++
		return err == nil
	})
	for off < len(blob) {
		resp := patch(b, off)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("chunk at %d after PostgreSQL was back (%s later): %s %s", off, time.Since(back).Round(time.Millisecond), resp.Status, readAll(t, resp))
		}
		off = min(off+chunk, len(blob))
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	resp = do(t, http.MethodPut, b.url(loc+sep+"digest="+blobDigest(blob)), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit: %s %s", resp.Status, readAll(t, resp))
	}
	t.Logf("resumed and committed %s after PostgreSQL was back", time.Since(back).Round(time.Millisecond))
	if took := time.Since(back); took > 10*time.Second {
		t.Errorf("resuming took %s", took)
	}
	getBlob(t, a, "drill/chunked", blobDigest(blob), blob)
}
