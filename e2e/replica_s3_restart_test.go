package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestReplicaS3RestartMidChunkedPush: the S3 server is killed while a
// chunk of a chunked push is arriving, and started again. The chunk is
// refused with 503, the session keeps what was acknowledged (its GET
// answers even while S3 is down), and once S3 is back the client resumes
// at the offset it is told, on another replica. S3 killed again right
// before the final PUT: 503, and the same PUT once it is back commits the
// blob whole.
func TestReplicaS3RestartMidChunkedPush(t *testing.T) {
	needBinary(t)
	c := startCluster(t, 2, "", nil)
	a, b := c.replicas[0], c.replicas[1]
	blob := randomBytes(t, 24<<20)
	const chunk = 8 << 20
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
	if _, err := pw.Write(blob[chunk : chunk+chunk*3/4]); err != nil {
		t.Fatal(err)
	}
	c.s3.Kill()
	start := time.Now()
	go func() {
		_, _ = pw.Write(blob[chunk+chunk*3/4 : 2*chunk])
		pw.Close()
	}()
	if resp := <-answered; resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second chunk, S3 killed mid-body: %s after %s, want 503", resp.Status, time.Since(start).Round(time.Millisecond))
	}
	if r := do(t, http.MethodGet, b.url(loc), nil, nil); r.StatusCode != http.StatusNoContent || r.Header.Get("Range") != fmt.Sprintf("0-%d", chunk-1) {
		t.Errorf("session with S3 down: %s Range %q, want 204 and the first chunk", r.Status, r.Header.Get("Range"))
	}
	c.s3.Restart(t)
	var off int
	waitFor(t, 20*time.Second, "the session's status", func() bool {
		resp := do(t, http.MethodGet, b.url(loc), nil, nil)
		if resp.StatusCode != http.StatusNoContent {
			return false
		}
		_, err := fmt.Sscanf(resp.Header.Get("Range"), "0-%d", &off)
		off++
		return err == nil
	})
	if off != chunk {
		t.Errorf("resuming at %d, want %d (the acknowledged chunk)", off, chunk)
	}
	for off < len(blob) {
		resp := patch(b, off)
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("chunk at %d: %s %s", off, resp.Status, readAll(t, resp))
		}
		off = min(off+chunk, len(blob))
	}
	sep := "?"
	if strings.Contains(loc, "?") {
		sep = "&"
	}
	c.s3.Kill()
	resp = do(t, http.MethodPut, b.url(loc+sep+"digest="+blobDigest(blob)), nil, nil)
	wantUnavailable(t, resp, "the final PUT with S3 down")
	c.s3.Restart(t)
	resp = do(t, http.MethodPut, b.url(loc+sep+"digest="+blobDigest(blob)), nil, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT after S3 back: %s %s", resp.Status, readAll(t, resp))
	}
	got := do(t, http.MethodGet, a.url("/v2/drill/chunked/blobs/"+blobDigest(blob)), nil, nil)
	if g := readAll(t, got); !bytes.Equal(g, blob) {
		t.Fatalf("blob read back: %s %d bytes", got.Status, len(g))
	}
}
