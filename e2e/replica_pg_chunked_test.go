package e2e

import (
	"net/http"
	"testing"
	"time"
)

// TestReplicaPostgresCrashMidChunkedPush: a chunked push whose chunk
// is arriving when PostgreSQL crashes (-m immediate) gets a 503; once
// PostgreSQL is back, the client asks the session's offset and resumes
// there, on either replica, at once (the session's lease does not keep it
// waiting), and the blob commits whole.
func TestReplicaPostgresCrashMidChunkedPush(t *testing.T) {
	needBinary(t)
	c := startCluster(t, 2, "", nil)
	a, b := c.replicas[0], c.replicas[1]
	blob := randomBytes(t, 12<<20)
	const chunk = 4 << 20
	// The second chunk's body is on its way (the session's lease taken)
	// when PostgreSQL crashes.
	p, resp, cut := startChunkedCut(t, a, blob, chunk, chunk/2, func() {
		if err := c.pg.Kill(); err != nil {
			t.Fatal(err)
		}
	})
	if resp != nil {
		t.Logf("second chunk, PostgreSQL crashed mid-body: %s after %s", resp.Status, time.Since(cut).Round(time.Millisecond))
		if resp.StatusCode != http.StatusServiceUnavailable && resp.StatusCode != http.StatusAccepted {
			t.Errorf("second chunk, PostgreSQL crashed mid-body: %s", resp.Status)
		}
	}
	if err := c.pg.Start(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	// The client asks where the session stands, then resumes there.
	p.resume(b, 10*time.Second)
	if resp := p.commit(b); resp.StatusCode != http.StatusCreated {
		t.Fatalf("commit: %s %s", resp.Status, readAll(t, resp))
	}
	t.Logf("resumed and committed %s after PostgreSQL was back", time.Since(back).Round(time.Millisecond))
	if took := time.Since(back); took > 10*time.Second {
		t.Errorf("resuming took %s", took)
	}
	getBlob(t, a, "drill/chunked", blobDigest(blob), blob)
}
