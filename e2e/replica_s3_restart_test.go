package e2e

import (
	"bytes"
	"fmt"
	"net/http"
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
	p, resp, cut := startChunkedCut(t, a, blob, chunk, chunk*3/4, func() { c.s3.Kill() })
	if resp != nil && resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second chunk, S3 killed mid-body: %s after %s, want 503", resp.Status, time.Since(cut).Round(time.Millisecond))
	}
	if r := do(t, http.MethodGet, b.url(p.loc), nil, nil); r.StatusCode != http.StatusNoContent || r.Header.Get("Range") != fmt.Sprintf("0-%d", chunk-1) {
		t.Errorf("session with S3 down: %s Range %q, want 204 and the first chunk", r.Status, r.Header.Get("Range"))
	}
	c.s3.Restart(t)
	if off := p.resume(b, 20*time.Second); off != chunk {
		t.Errorf("resumed at %d, want %d (the acknowledged chunk)", off, chunk)
	}
	c.s3.Kill()
	wantUnavailable(t, p.commit(b), "the final PUT with S3 down")
	c.s3.Restart(t)
	if resp := p.commit(b); resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT after S3 back: %s %s", resp.Status, readAll(t, resp))
	}
	got := do(t, http.MethodGet, a.url("/v2/drill/chunked/blobs/"+blobDigest(blob)), nil, nil)
	if g := readAll(t, got); !bytes.Equal(g, blob) {
		t.Fatalf("blob read back: %s %d bytes", got.Status, len(g))
	}
}
